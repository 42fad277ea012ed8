from __future__ import annotations

import pytest

from churnwatch.pipeline.ordering import (
    Apply,
    ReadAhead,
    ReorderBuffer,
    Sequencer,
    Stall,
    Sweep,
    Watermark,
    due_sweeps,
)

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


def test_a_topic_read_to_its_end_holds_the_watermark_until_idle_long_enough():
    """Apache Kafka reports a partition's end as soon as it is read to it, while a
    producer may still be writing older events to it: read to the end, a topic
    holds the clock at its newest event for ``idle_wait`` seconds after its last
    message (as Kafka Streams' max.task.idle.ms), then lets it move."""
    ends = {("orders", 0): 10, ("payments", 0): 5}
    wm = Watermark(["orders", "payments"], idle_wait=1.0)
    wm.observe("orders", 0, 9, 500.0)
    wm.observe("payments", 0, 4, 100.0)  # both read to their ends
    assert wm.advance(0, lambda t, p: ends[(t, p)], now=10.0) == 100.0
    assert wm.advance(0, lambda t, p: ends[(t, p)], now=10.9) == 100.0
    ends[("payments", 0)] = 6  # the producer wrote on; a message read resets the wait
    wm.observe("payments", 0, 5, 300.0)
    assert wm.advance(0, lambda t, p: ends[(t, p)], now=11.5) == 300.0
    assert wm.advance(0, lambda t, p: ends[(t, p)], now=12.6) == 500.0  # idle: move on
    # without the wait (0) the topics read to their ends never hold it
    wm = Watermark(["orders", "payments"])
    wm.observe("orders", 0, 9, 500.0)
    wm.observe("payments", 0, 4, 100.0)
    assert wm.advance(0, lambda t, p: {"orders": 10, "payments": 5}[t]) == 500.0


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


def test_a_topic_with_nothing_new_since_the_restart_does_not_hold_the_watermark():
    """After a restart reading starts at the committed offsets: a topic read to its
    end before the crash has no message to observe, and must not stop the clock."""
    wm = Watermark(["customers", "orders"])
    ends = {"customers": 50, "orders": 10}
    wm.observe("orders", 0, 4, 300.0)
    assert wm.advance(0, lambda t, p: ends[t]) == 0.0  # customers: 50 unread, as far as known
    wm.start("customers", 0, 50)  # committed offset 50: all read before the crash
    assert wm.advance(0, lambda t, p: ends[t]) == 300.0
    wm.start("orders", 0, 2)  # an older start never rewinds what was read
    wm.observe("orders", 0, 9, 400.0)
    assert wm.advance(0, lambda t, p: ends[t]) == 400.0


def test_reorder_buffer_releases_oldest_first_and_only_before_the_bound():
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.push(0, 30.0, "c")
    buffer.push(0, 10.0, "a")
    buffer.push(1, 5.0, "other partition")
    buffer.push(0, 20.0, "b")
    assert buffer.release(0, 20.0) == ["a"]
    assert buffer.release(0, 20.0, inclusive=True) == ["b"]
    assert len(buffer) == 2


def test_sequencer_sweeps_each_boundary_after_the_events_before_it():
    seq: Sequencer[str] = Sequencer(DAY)
    steps = seq.offer(0, 10.2 * DAY, "a", watermark=10.2 * DAY)
    assert steps == [Sweep(10 * DAY), Apply("a")]  # first sweep: only the latest boundary
    steps = seq.offer(0, 12.5 * DAY, "b", watermark=11.5 * DAY)  # another topic lags
    assert steps == [Sweep(11 * DAY)]  # b waits
    steps = seq.advance(0, watermark=13.0 * DAY)
    assert steps == [Sweep(12 * DAY), Apply("b"), Sweep(13 * DAY)]


def test_a_first_clock_that_jumps_sweeps_every_day_from_the_oldest_event_held():
    """The clock can stay unknown while a topic is idle, then jump: the sweeps still
    start at the oldest held event's day, as when the clock moves event by event."""
    stepwise: Sequencer[str] = Sequencer(DAY)
    jumped: Sequencer[str] = Sequencer(DAY)
    events = [(10.2 * DAY, "a"), (11.5 * DAY, "b"), (13.1 * DAY, "c")]
    by_event = [step for t, e in events for step in stepwise.offer(0, t, e, watermark=t)]
    for t, e in events:
        assert jumped.offer(0, t, e, watermark=0.0) == []  # nothing known yet
    assert (
        jumped.advance(0, 13.1 * DAY)
        == by_event
        == [
            Sweep(10 * DAY),
            Apply("a"),
            Sweep(11 * DAY),
            Apply("b"),
            Sweep(12 * DAY),
            Sweep(13 * DAY),
            Apply("c"),
        ]
    )


def test_sequencer_holds_back_for_the_allowed_lateness_and_counts_later_events():
    seq: Sequencer[str] = Sequencer(DAY, lateness_seconds=DAY / 2)
    assert seq.offer(0, 10.2 * DAY, "a", 10.2 * DAY) == [Sweep(9 * DAY)]  # clock 9.7: a waits
    # 0.4 day out of order, within the allowed lateness: it waits too ...
    assert seq.offer(0, 9.8 * DAY, "early", 10.2 * DAY) == []
    # ... and is applied before the 10-day sweep; a (10.2) waits for the clock
    assert seq.offer(0, 10.6 * DAY, "c", 10.6 * DAY) == [Apply("early"), Sweep(10 * DAY)]
    # older than the sweep already run: applied at once, marked late
    assert seq.offer(0, 9.5 * DAY, "late", 10.6 * DAY)[0] == Apply("late", late=True)


def test_consistency_check_finds_a_differing_customer_and_skips_lagging_ones(settings):
    from churnwatch.consumers.consistency import compare
    from churnwatch.pipeline.events import decode_event
    from churnwatch.pipeline.processing import run_history
    from churnwatch.producers.simulator import parse_start, simulate

    events = [
        decode_event(e.payload) for e in simulate(30, 3, parse_start("2024-10-07"), 200, 2, 0)[0]
    ]
    live, _ = run_history(events, settings.warnings, 86400.0)
    report = compare(live, events, settings, sample=30)
    assert report.sampled == 30 and report.compared == 30 and not report.mismatched

    # an archived order whose amount differs from what the worker applied
    target = next(e for e in reversed(events) if e.type == "order_placed")
    changed = [e.model_copy(update={"amount": e.amount * 3}) if e is target else e for e in events]
    report = compare(live, changed, settings, sample=30)
    assert list(report.mismatched) == [target.customer_id]
    assert "revenue_52w" in report.mismatched[target.customer_id]

    # an event the worker has not applied yet: lagging, not a mismatch
    fewer = [e for e in events if e is not target]
    report = compare(live, fewer, settings, sample=30)
    assert report.lagging == 1 and not report.mismatched


def test_a_sweep_looks_closely_at_exactly_the_customers_whose_episodes_change(settings):
    """The vectorised pass may skip a customer only when evaluating it would change nothing:
    at every weekly boundary of a simulated history, a sweep gives the same records as
    evaluating every customer one by one."""
    from churnwatch.pipeline.apply import apply_event
    from churnwatch.pipeline.episodes import evaluate
    from churnwatch.pipeline.events import decode_event
    from churnwatch.pipeline.processing import sweep
    from churnwatch.pipeline.state import StateBlock
    from churnwatch.pipeline.state_format import decode_state, encode_state
    from churnwatch.producers.simulator import parse_start, simulate

    events, _ = simulate(150, 11, parse_start("2024-10-07"), 540, 3, 0)
    decoded = [decode_event(e.payload) for e in events]
    block = StateBlock()
    checked = records = 0
    boundary = (decoded[0].occurred_at.timestamp() // DAY + 7) * DAY
    for event in decoded:
        while event.occurred_at.timestamp() >= boundary:
            copy = StateBlock()
            for state in block.values():
                decode_state(encode_state(state), copy)
            swept = [r for _, recs in sweep(block, boundary, settings.warnings) for r in recs]
            one_by_one = [
                r for s in copy.values() for r in evaluate(s, boundary, settings.warnings)
            ]
            assert swept == one_by_one, boundary
            checked += 1
            records += len(swept)
            boundary += 7 * DAY
        apply_event(block.state(event.customer_id), event)
    assert checked > 70 and records > 100


def _consume(topics: dict[str, list[float]], fetch: int, limit: int | None):
    """Read one partition's topics a fetch at a time as the worker does (every topic
    not paused gives up to ``fetch`` messages), with or without pausing: the
    steps applied and the most events that waited at once."""
    wm = Watermark(list(topics))
    sequencer: Sequencer[tuple[str, int]] = Sequencer(DAY)
    pacing = ReadAhead(limit) if limit else None
    ends = {name: len(times) for name, times in topics.items()}
    read = dict.fromkeys(topics, 0)
    steps: list = []
    most = 0
    for _ in range(100_000):  # a pause that stops every topic would never end
        if all(read[name] == ends[name] for name in topics):
            break
        paused = {name for name, _ in pacing.paused} if pacing else set()
        for name, times in topics.items():
            if name in paused:
                continue
            for offset in range(read[name], min(read[name] + fetch, ends[name])):
                wm.observe(name, 0, offset, times[offset])
                steps += sequencer.offer(0, times[offset], (name, offset))
            read[name] = min(read[name] + fetch, ends[name])
        most = max(most, sequencer.buffer.held(0))
        steps += sequencer.advance(0, wm.advance(0, lambda t, p: ends[t]))
        if pacing:
            pacing.update(0, sequencer.buffer.held(0), wm)
    else:
        raise AssertionError("reading stopped: every topic paused")
    return steps + sequencer.drain(0), most


def test_topics_read_ahead_are_paused_so_few_events_wait_and_the_steps_stay_the_same():
    # A dense topic (an order every hour) and a sparse one (a complaint a day) over
    # a year: unpaced, the sparse topic is read to its end long before the dense
    # one and nearly all of it waits.
    topics = {
        "orders": [3600.0 * i for i in range(24 * 365)],
        "complaints": [DAY * i + 1800.0 for i in range(365)],
    }
    unpaced, most_unpaced = _consume(topics, fetch=50, limit=None)
    paced, most_paced = _consume(topics, fetch=50, limit=100)
    assert most_unpaced > 300
    assert most_paced <= 100 + 2 * 50  # the limit, plus what one fetch can bring
    assert paced == unpaced  # the same events applied and sweeps run, in the same order
    assert sum(isinstance(step, Apply) for step in paced) == 24 * 365 + 365


def test_a_paused_topic_the_watermark_comes_to_wait_for_is_resumed():
    # Orders end after half a year; then the clock waits for whichever paused
    # topic is behind, which must be read again whatever else waits.
    topics = {
        "orders": [3600.0 * i + 1 for i in range(24 * 180)],
        "payments": [DAY * i + 7 for i in range(365)],
        "contacts": [DAY / 4 * i + 13 for i in range(4 * 365)],  # (no two at one time)
    }
    unpaced, _ = _consume(topics, fetch=50, limit=None)
    paced, most = _consume(topics, fetch=50, limit=100)
    assert paced == unpaced and most <= 100 + 3 * 50


def test_the_topic_the_watermark_waits_for_is_never_paused():
    wm = Watermark(["orders", "complaints"])
    pacing = ReadAhead(10)
    ends = {"orders": 1000, "complaints": 100}
    wm.observe("complaints", 0, 80, 900.0)  # read far ahead
    wm.observe("orders", 0, 5, 100.0)  # the slowest: the watermark waits for it
    wm.advance(0, lambda t, p: ends[t])
    assert pacing.update(0, 5, wm) == ([], [])  # few wait: nothing paused
    assert pacing.update(0, 50, wm) == ([("complaints", 0)], [])
    wm.observe("orders", 0, 500, 899.0)
    wm.advance(0, lambda t, p: ends[t])
    assert pacing.update(0, 3, wm) == ([], [])  # paused until the clock catches up
    wm.observe("orders", 0, 600, 950.0)
    wm.advance(0, lambda t, p: ends[t])  # now the clock waits for complaints
    assert pacing.update(0, 50, wm) == ([("orders", 0)], [("complaints", 0)])
    assert pacing.paused == {("orders", 0)}


def test_events_waiting_unchanged_are_reported_once_a_period_until_they_move():
    stall = Stall(30.0)
    assert stall.check(5, 0.0) is None
    assert stall.check(5, 29.0) is None
    assert stall.check(5, 31.0) == 31.0
    assert stall.check(5, 40.0) is None  # just reported: the next one a period later
    assert stall.check(6, 50.0) is None  # moved: the period starts again
    assert stall.check(6, 79.0) is None
    assert stall.check(6, 80.0) == 30.0
    assert stall.check(0, 90.0) is None  # nothing waits
    assert stall.check(6, 95.0) is None
