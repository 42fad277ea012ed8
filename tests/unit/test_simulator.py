from __future__ import annotations

from collections import defaultdict

import pytest

from churnwatch.pipeline.events import InvalidEvent, decode_event
from churnwatch.pipeline.processing import run_history
from churnwatch.producers.simulator import (
    CHURN_PROFILES,
    STEADY_PROFILES,
    parse_start,
    read_ground_truth,
    simulate,
    write_ground_truth,
)

START = parse_start("2024-10-07")


def test_same_seed_same_events_other_seed_other_events():
    a, _ = simulate(20, 3, START, 120, 2, 2)
    b, _ = simulate(20, 3, START, 120, 2, 2)
    c, _ = simulate(20, 4, START, 120, 2, 2)
    assert [e.payload for e in a] == [e.payload for e in b]
    assert [e.payload for e in a] != [e.payload for e in c]


def test_events_are_in_event_time_order_and_valid_except_the_deliberate_ones():
    events, _ = simulate(15, 1, START, 200, 3, 4)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    invalid = 0
    for e in events:
        try:
            decode_event(e.payload, e.key.encode())
        except InvalidEvent:
            invalid += 1
            assert e.malformed
    assert invalid == 4


def test_ground_truth_round_trips(tmp_path):
    _, truth = simulate(30, 5, START, 540, 3, 0)
    path = tmp_path / "truth.csv"
    write_ground_truth(truth, path)
    assert read_ground_truth(path) == truth
    churners = [t for t in truth if t.churned]
    assert churners and all(t.onset and t.churn_date for t in churners)
    assert all(t.onset is None for t in truth if not t.churned)


@pytest.fixture(scope="module")
def simulated_run():
    from churnwatch.core.settings import load_settings

    settings = load_settings()
    events, truth = simulate(200, 21, START, 540, 4, 0)
    decoded = [decode_event(e.payload) for e in events]
    _, records = run_history(decoded, settings.warnings, 86_400)
    return truth, records


def test_each_churn_profile_is_warned_and_look_alikes_mostly_are_not(simulated_run):
    truth, records = simulated_run
    opened = defaultdict(list)
    for r in records:
        if r.status == "opened":
            opened[r.customer_id].append(r)
    rate: dict[str, list[bool]] = defaultdict(list)
    for t in truth:
        if t.churned:
            rate[t.profile].append(any(w.opened_at >= t.onset for w in opened[t.customer_id]))
        else:
            rate[t.profile].append(bool(opened[t.customer_id]))
    for profile in CHURN_PROFILES:
        warned = rate[profile]
        assert warned and sum(warned) / len(warned) >= 0.8, (profile, warned)
    steady = [w for p in STEADY_PROFILES for w in rate[p]]
    assert sum(steady) / len(steady) <= 0.2


@pytest.mark.parametrize(
    "profile, matching",
    [
        ("late_payer", {"overdue_debt"}),
        ("complainer", {"complaint_trouble"}),
        ("silent", {"cooling_engagement", "sales_drop"}),
        ("cooling", {"cooling_engagement"}),
    ],
)
def test_each_churner_is_caught_by_the_matching_warning(simulated_run, profile, matching):
    truth, records = simulated_run
    churners = {t.customer_id: t for t in truth if t.profile == profile}
    caught = {
        r.customer_id
        for r in records
        if r.customer_id in churners
        and r.status == "opened"
        and r.warning_type in matching
        and r.opened_at >= churners[r.customer_id].onset
    }
    assert churners and len(caught) / len(churners) >= 0.8
