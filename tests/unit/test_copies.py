"""A history re-sent (copies at new offsets, long after their originals) is never
applied twice; genuine events in a burst or a little out of order still apply."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from churnwatch.pipeline.apply import PossibleCopy, apply_event
from churnwatch.pipeline.events import decode_event
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.state import RECENT_EVENT_IDS, new_state
from churnwatch.pipeline.state_format import encode_state
from churnwatch.producers.simulator import parse_start, simulate
from tests.factories import T0, make_event

DAY = 86_400.0


def _history():
    events, _ = simulate(40, 23, parse_start("2024-10-07"), 400, 3, 0)
    return [decode_event(e.payload) for e in events]


def test_copies_of_a_history_sent_again_leave_every_state_as_if_sent_once(settings):
    history = _history()
    rng = random.Random(3)
    copies = rng.sample(history, 400) + history[-50:]  # old ones, and the newest
    once, records_once = run_history(history, settings.warnings, DAY)
    twice, records_twice = run_history([*history, *copies], settings.warnings, DAY)
    per_customer = {c: sum(e.customer_id == c for e in history) for c in once.rows}
    assert max(per_customer.values()) > 4 * RECENT_EVENT_IDS  # far more than the ring holds
    assert sorted(twice.rows) == sorted(once.rows)
    for customer in once.rows:
        assert encode_state(twice[customer]) == encode_state(once[customer]), customer
    assert records_twice == records_once


def test_each_copy_is_a_duplicate_or_refused_with_the_reason():
    everything = _history()
    history = [e for e in everything if e.customer_id == everything[0].customer_id]
    state = new_state(history[0].customer_id)
    for event in history:
        assert apply_event(state, event) is True
    stored = encode_state(state)
    outcomes = {"duplicate": 0, "refused": 0}
    for event in history:
        try:
            assert apply_event(state, event) is False
            outcomes["duplicate"] += 1
        except PossibleCopy as exc:
            assert event.event_id in str(exc) and "not applied" in str(exc)
            outcomes["refused"] += 1
    assert encode_state(state) == stored
    assert outcomes["duplicate"] >= RECENT_EVENT_IDS - 1 and outcomes["refused"] > 0


def test_a_burst_at_one_moment_and_events_a_little_out_of_order_still_apply():
    state = new_state("C1")
    # 3 ring-fulls of orders stamped with the same moment (a date-only export)
    for _ in range(3 * RECENT_EVENT_IDS):
        assert apply_event(state, make_event("order", at=T0)) is True
    later = [make_event("order", at=T0 + timedelta(hours=h)) for h in range(1, 26)]
    for event in later[5:]:
        assert apply_event(state, event) is True
    # five that came late, behind 20 newer ones, but newer than any that left the ring
    for event in later[:5]:
        assert apply_event(state, event) is True
    assert state.orders_total == 3 * RECENT_EVENT_IDS + 25


def test_history_back_filled_far_out_of_order_is_refused_not_applied():
    state = new_state("C1")
    for d in range(2 * RECENT_EVENT_IDS):
        apply_event(state, make_event("order", at=T0 + timedelta(days=d)))
    orders = state.orders_total
    with pytest.raises(PossibleCopy):
        apply_event(state, make_event("order", at=T0 + timedelta(days=3, hours=1)))
    assert state.orders_total == orders
