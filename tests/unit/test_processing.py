from __future__ import annotations

import pytest

from pipeline.processing import ReorderBuffer, Watermark, due_sweeps

DAY = 86_400.0


@pytest.mark.parametrize(
    "last, watermark, expected",
    [
        (0.0, 10.5 * DAY, [10 * DAY]),  # first sweep: only the latest boundary
        (10 * DAY, 10.9 * DAY, []),
        (10 * DAY, 13.2 * DAY, [11 * DAY, 12 * DAY, 13 * DAY]),
        (10 * DAY, 11 * DAY, [11 * DAY]),
    ],
)
def test_due_sweeps(last, watermark, expected):
    assert due_sweeps(last, watermark, DAY) == expected


def test_watermark_waits_for_the_slowest_topic_with_unread_messages():
    wm = Watermark(["orders", "payments"])
    ends = {("orders", 0): 10, ("payments", 0): 10}
    wm.observe("orders", 0, 8, 500.0)
    # payments has unread messages and nothing seen yet: no advance
    assert wm.advance(0, lambda t, p: ends[(t, p)]) == 0.0
    wm.observe("payments", 0, 2, 100.0)
    assert wm.advance(0, lambda t, p: ends[(t, p)]) == 100.0
    wm.observe("payments", 0, 9, 450.0)  # payments read to the end
    assert wm.advance(0, lambda t, p: ends[(t, p)]) == 500.0  # orders still has 1 unread
    wm.observe("orders", 0, 9, 520.0)
    assert wm.advance(0, lambda t, p: ends[(t, p)]) == 520.0


def test_watermark_never_goes_back():
    wm = Watermark(["orders"])
    wm.observe("orders", 1, 0, 1000.0)
    assert wm.advance(1, lambda t, p: 1) == 1000.0
    wm.observe("orders", 1, 1, 10.0)
    assert wm.advance(1, lambda t, p: 2) == 1000.0


def test_a_topic_whose_end_is_unknown_holds_the_watermark():
    wm = Watermark(["orders", "payments"])
    wm.observe("orders", 0, 0, 1000.0)
    assert wm.advance(0, lambda t, p: 1 if t == "orders" else None) == 0.0


def test_unusable_messages_still_count_as_read():
    wm = Watermark(["orders", "payments"])
    wm.observe("orders", 0, 0)  # dead-lettered: no event time, but consumed
    wm.observe("payments", 0, 0, 700.0)
    assert wm.advance(0, lambda t, p: 1) == 700.0


def test_reorder_buffer_releases_oldest_first_and_only_before_the_bound():
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.push(0, 30.0, "c")
    buffer.push(0, 10.0, "a")
    buffer.push(1, 5.0, "other partition")
    buffer.push(0, 20.0, "b")
    assert buffer.release(0, 20.0) == ["a"]
    assert buffer.release(0, 20.0, inclusive=True) == ["b"]
    assert len(buffer) == 2
