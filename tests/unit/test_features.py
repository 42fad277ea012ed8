from __future__ import annotations

import zlib
from datetime import timedelta

import numpy as np

from churnwatch.pipeline.apply import apply_event
from churnwatch.pipeline.features import read_features
from churnwatch.pipeline.state import (
    MAX_OPEN_INVOICES,
    RING_WEEKS,
    CustomerState,
    StateBlock,
    new_state,
)
from churnwatch.pipeline.state_format import decode_state, encode_state
from tests.factories import T0


def feed(state: CustomerState, events) -> CustomerState:
    for event in events:
        apply_event(state, event)
    return state


def test_weekly_orders_fill_the_recent_window(event_factory):
    state = feed(
        new_state("C1"),
        [event_factory("order", at=T0 + timedelta(weeks=w), amount=100.0) for w in range(12)],
    )
    f = read_features(state, T0 + timedelta(weeks=11, days=1), recent_weeks=8, baseline_weeks=26)
    assert f.orders_recent == 8
    assert f.amount_recent == 800.0
    assert f.orders_total == 12
    assert round(f.mean_order_gap_days) == 7
    assert round(f.days_since_last_order or 0) == 1


def test_a_redelivered_event_is_applied_once(event_factory):
    order = event_factory("order")
    state = new_state("C1")
    assert apply_event(state, order) is True
    assert apply_event(state, order) is False
    assert state.orders_total == 1


def test_overdue_amount_and_days_past_due(event_factory):
    state = feed(
        new_state("C1"),
        [
            event_factory("invoice", invoice_id="A", amount=500.0),
            event_factory("invoice", invoice_id="B", amount=300.0, at=T0 + timedelta(days=20)),
            event_factory("payment", invoice_id="B", amount=300.0, at=T0 + timedelta(days=40)),
        ],
    )
    f = read_features(state, T0 + timedelta(days=75))
    assert f.overdue_amount == 500.0
    assert f.overdue_invoices == 1
    assert round(f.max_days_past_due) == 45
    assert f.open_balance == 500.0


def test_payment_against_unknown_invoice_settles_the_oldest(event_factory):
    state = feed(
        new_state("C1"),
        [
            event_factory("invoice", invoice_id="A", amount=100.0),
            event_factory("invoice", invoice_id="B", amount=100.0, at=T0 + timedelta(days=5)),
            event_factory("payment", invoice_id="ZZZ", amount=150.0, at=T0 + timedelta(days=6)),
        ],
    )
    assert [inv[0] for inv in state.open_invoices] == ["B"]
    assert state.open_invoices[0][1] == 50.0


def test_state_stays_bounded_however_long_the_history(event_factory):
    events = []
    for i in range(400):
        at = T0 + timedelta(days=3 * i)
        events.append(event_factory("order", at=at))
        events.append(event_factory("invoice", invoice_id=f"I{i}", amount=10.0, at=at))
        events.append(event_factory("contact", at=at))
    state = feed(new_state("C1"), events)
    assert len(state.open_invoices) == MAX_OPEN_INVOICES
    # merged, not dropped: all 400 unpaid invoices are still owed
    assert round(sum(inv[1] for inv in state.open_invoices)) == 4000
    assert len(state.order_counts) == RING_WEEKS
    assert len(encode_state(state)) <= 2048  # stored bytes, with 48 open invoices


def test_one_huge_order_does_not_inflate_the_baseline(event_factory):
    events = [event_factory("order", at=T0 + timedelta(weeks=w), amount=100.0) for w in range(20)]
    events.append(event_factory("order", at=T0 + timedelta(weeks=20), amount=100_000.0))
    state = feed(new_state("C1"), events)
    f = read_features(state, T0 + timedelta(weeks=20, days=1), recent_weeks=8, baseline_weeks=8)
    assert f.amount_recent < 1500  # the big order counts as at most 4x a typical one


def test_stored_state_round_trip(event_factory):
    state = feed(new_state("C1"), [event_factory("order"), event_factory("complaint")])
    block = StateBlock()
    restored, partition = decode_state(encode_state(state, partition=3), block)
    assert partition == 3
    assert restored == state and restored.orders_total == 1 and restored.open_complaints


def test_events_older_than_the_ring_are_counted_not_silently_lost(event_factory):
    state = feed(
        new_state("C1"),
        [
            event_factory("order", at=T0 + timedelta(weeks=100)),
            event_factory("order", at=T0),
        ],
    )
    assert state.late_events == 1
    assert state.orders_total == 2


def test_an_older_stored_format_is_migrated_by_field_name(event_factory, monkeypatch):
    """A release that adds and reorders fields still reads the states an older one stored."""
    import numpy as np

    from churnwatch.pipeline import state as record_module

    state = feed(new_state("C1"), [event_factory("order", amount=120.0)])
    stored = encode_state(state)
    old = record_module.STATE_DTYPE
    layout = [(n, *(old.fields[n][0].subdtype or (old.fields[n][0],))) for n in old.names]
    reordered = [("loyalty_points", "<f8"), *reversed(layout)]  # a new field, a new order
    newer = np.dtype(reordered)
    version = record_module.FORMAT_VERSION + 1
    monkeypatch.setattr(record_module, "STATE_DTYPE", newer)
    monkeypatch.setattr(record_module, "FORMAT_VERSION", version)
    monkeypatch.setattr(
        record_module, "STATE_DTYPES", {**record_module.STATE_DTYPES, version: newer}
    )
    block = StateBlock()
    restored, _ = decode_state(stored, block)
    assert block.data.dtype == newer
    assert restored.orders_total == 1 and restored.last_order_at == state.last_order_at
    assert block.data["loyalty_points"][restored.row] == 0.0


def test_a_version_1_state_reads_with_no_stream_position(event_factory):
    """Records stored before format 2 say nothing of where the stream stood: a
    restarted worker applies every event it reads for them (their ids still
    catch repeats)."""
    import numpy as np

    from churnwatch.pipeline import state as layout

    state = feed(new_state("C1"), [event_factory("order", amount=120.0)])
    v1 = layout.STATE_DTYPES[1]
    record = np.zeros(1, v1)
    for name in v1.names:
        record[name] = state.block.data[name][state.row]
    stored = encode_state(state)
    payload = zlib.decompress(stored[5:])
    old = (
        stored[:2]
        + bytes([1])
        + stored[3:5]
        + zlib.compress(record.tobytes() + payload[layout.STATE_DTYPE.itemsize :])
    )
    restored, _ = decode_state(old, StateBlock())
    assert restored.orders_total == 1 and restored.last_order_at == state.last_order_at
    for name in layout.STREAM_FIELDS:
        assert not restored.block.data[name][restored.row].any()


def test_a_state_from_a_newer_release_is_refused_with_a_clear_error(event_factory):
    import pytest

    from churnwatch.pipeline.state_format import StateFormatError

    stored = bytearray(encode_state(new_state("C1")))
    stored[2] = 99  # format version
    with pytest.raises(StateFormatError, match="format 99 is newer"):
        decode_state(bytes(stored), StateBlock())


def test_window_sums_are_the_weeks_added_oldest_first():
    """The compiled window sums (pipeline/kernels.py) against a plain loop over each
    customer's weeks, bit for bit, in every partition's block and for customers
    seen in part of the windows, all of them, or (long silent) none of them."""
    from churnwatch.core.thresholds import WarningThresholds
    from churnwatch.pipeline.events import decode_event
    from churnwatch.pipeline.features import read_many, weekly_history
    from churnwatch.pipeline.processing import run_history
    from churnwatch.producers.simulator import parse_start, simulate

    events, _ = simulate(40, 3, parse_start("2024-10-07"), 420, 2, 0)
    states, _ = run_history([decode_event(e.payload) for e in events], WarningThresholds(), 86400)
    end = decode_event(events[-1].payload).epoch
    rows = np.arange(len(states))
    for as_of in (end - 200 * 86400, end, end + 30 * 86400, end + 500 * 86400):
        columns = read_many(states, rows, as_of, recent_weeks=8, baseline_weeks=26)
        for i, customer in enumerate(states):
            _, orders, revenue = weekly_history(states[customer], as_of)

            def added(values, start, stop):
                total = 0.0
                for value in values[len(values) - start : len(values) - stop]:
                    total += float(value)
                return total

            assert columns["orders_recent"][i] == added(orders, 8, 0)
            assert columns["orders_13w"][i] == added(orders, 13, 0)
            assert columns["orders_baseline_per_week"][i] == added(orders, 34, 8) / 26
            assert columns["amount_recent"][i] == added(revenue, 8, 0)
            assert columns["amount_13w"][i] == added(revenue, 13, 0)
            assert columns["revenue_52w"][i] == added(revenue, 52, 0)
            assert columns["amount_baseline_per_week"][i] == added(revenue, 34, 8) / 26
    assert columns["revenue_52w"].sum() == 0  # 500 days on, every ring has rolled over
