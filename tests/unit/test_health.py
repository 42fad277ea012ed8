"""The health score (pipeline/health.py): what lowers it, what the state keeps of
it, and that it tells the customers who leave from those who stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from churnwatch.core.settings import ConfigError, load_settings
from churnwatch.pipeline.events import decode_event
from churnwatch.pipeline.features import read_many
from churnwatch.pipeline.health import FAMILIES, UNKNOWN, health_of, health_view, record_health
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.state import DAY, WEEK, StateBlock, week_of
from churnwatch.pipeline.state_format import decode_state, encode_state
from churnwatch.producers.simulator import parse_start, simulate
from tests.factories import T0, make_event


def weekly(customer: str, weeks: int, amount: float = 500.0) -> list:
    return [
        make_event("order", customer_id=customer, at=T0 + timedelta(weeks=w), amount=amount)
        for w in range(weeks)
    ]


def scores_at(events: list, as_of: float, probability=None, rate=None, **weights):
    t = load_settings(warnings={"health": weights} if weights else {}).warnings
    block, _ = run_history(sorted(events, key=lambda e: e.epoch), t, 10**9)  # (no sweep)
    rows = np.arange(len(block))
    columns = read_many(block, rows, as_of, t.recent_weeks, t.baseline_weeks)
    score, parts = health_of(columns, t, probability, rate)
    return {block.customer_ids[i]: (int(score[i]), parts[i]) for i in rows}


def test_a_silence_overdue_debt_and_complaints_each_lower_the_score():
    end = T0 + timedelta(weeks=40)
    events = weekly("steady", 41) + weekly("silent", 33) + weekly("owing", 41)
    events += weekly("unhappy", 41)
    events.append(
        make_event(
            "invoice",
            customer_id="owing",
            at=end - timedelta(days=100),
            due_date=end - timedelta(days=70),
        )
    )
    events += [
        make_event(
            "complaint", customer_id="unhappy", at=end - timedelta(days=d), complaint_id=f"K{d}"
        )
        for d in (3, 6, 9, 12)
    ]
    got = scores_at(events, end.timestamp())
    steady = got["steady"][0]
    assert steady >= 90
    assert got["silent"][0] < steady - 25  # seven weeks without its weekly order
    assert got["owing"][0] < steady - 10  # 70 days past due
    assert got["unhappy"][0] < steady - 5  # a complaint surge
    buying, paying, engagement, service, risk = range(len(FAMILIES))
    assert got["silent"][1][buying] < 20 <= got["steady"][1][buying]
    assert got["owing"][1][paying] < 30
    assert got["unhappy"][1][service] < 50
    # what the data says nothing about is left out, not counted as healthy or not
    assert got["steady"][1][paying] == got["steady"][1][engagement] == UNKNOWN
    assert got["steady"][1][risk] == UNKNOWN  # no model


def test_the_model_risk_and_the_weights_move_the_score():
    end = T0 + timedelta(weeks=40)
    events = weekly("a", 41) + weekly("b", 41)
    risky = np.array([0.06, 0.9])  # a 6% book: "a" at the book's rate, "b" near certain
    got = scores_at(events, end.timestamp(), risky, 0.06)
    assert got["a"][1][4] == 100 and got["b"][1][4] < 15
    assert got["b"][0] < got["a"][0] - 15
    only_risk = scores_at(events, end.timestamp(), risky, 0.06, buying=0, service=0)
    assert only_risk["b"][0] == only_risk["b"][1][4]
    with pytest.raises(ConfigError, match="warnings.health: .*health weight"):
        load_settings(warnings={"health": {f: 0 for f in FAMILIES}})


def test_the_state_keeps_a_new_score_once_it_moves_enough_or_a_week_begins():
    block = StateBlock()
    rows = np.array([block.state("C1").row])
    monday = 3000 * WEEK + DAY
    parts = np.full((1, len(FAMILIES)), 80, np.uint8)

    def keep(at: float, score: int) -> list[int]:
        return record_health(block, rows, at, np.array([score], np.uint8), parts, 5).tolist()

    assert keep(monday, 80) == [rows[0]]  # the first score
    assert keep(monday + DAY, 78) == []  # moved 2 points: not recorded
    assert keep(monday + 2 * DAY, 74) == [rows[0]]  # 6 points
    assert keep(monday + 7 * DAY, 73) == [rows[0]]  # a new week
    assert keep(monday + 30 * DAY, 60) == [rows[0]]  # three weeks later
    view = health_view(block, int(rows[0]))
    assert view is not None and view["score"] == 60
    weeks = [score for _, score in view["history"]]
    assert weeks == [74, 73, 73, 73, 60]  # the weeks no sweep reached: the score that stood
    assert view["trend_7d"] == 60 - 73 and view["trend_30d"] == 60 - 74
    first_day = datetime.fromtimestamp(week_of(monday + 30 * DAY) * WEEK, UTC)
    assert view["history"][-1][0] == first_day.date().isoformat()


def test_the_state_keeps_the_models_probability_with_the_time_it_was_scored():
    """The customer page's churn probability is the last sweep's that kept it, with
    that sweep's time: kept again once it moves 2 points, not at every sweep."""
    block = StateBlock()
    rows = np.array([block.state("C1").row])
    monday = 3000 * WEEK + DAY
    parts = np.full((1, len(FAMILIES)), 80, np.uint8)

    def keep(at: float, probability: float) -> list[int]:
        score = np.array([80], np.uint8)
        return record_health(block, rows, at, score, parts, 5, np.array([probability])).tolist()

    assert keep(monday, 0.10) == [rows[0]]
    assert keep(monday + DAY, 0.11) == []  # one point: the stored value stands
    view = health_view(block, int(rows[0]))
    assert view is not None and view["churn_probability"] == pytest.approx(0.10)
    assert view["scored_at"] == datetime.fromtimestamp(monday, UTC)
    assert keep(monday + 2 * DAY, 0.31) == [rows[0]]  # the risk climbs: kept
    view = health_view(block, int(rows[0]))
    assert view["churn_probability"] == pytest.approx(0.31)
    assert view["scored_at"] == datetime.fromtimestamp(monday + 2 * DAY, UTC)
    # without a model the probability is unknown again, and said so
    score = np.array([80], np.uint8)
    assert record_health(block, rows, monday + 3 * DAY, score, parts, 5).tolist() == [rows[0]]
    view = health_view(block, int(rows[0]))
    assert view["churn_probability"] is None and view["scored_at"] is None


def test_a_state_stored_before_the_health_score_reads_with_it_unknown():
    block, _ = run_history(weekly("C1", 3), load_settings().warnings, 10**9)
    stored = bytearray(encode_state(block["C1"]))
    fresh = StateBlock()
    restored, _ = decode_state(bytes(stored), fresh)
    assert fresh.data["health_score"][restored.row] == UNKNOWN
    assert health_view(fresh, restored.row) is None


def test_sweeps_keep_a_score_that_tells_the_customers_who_leave_from_those_who_stay():
    events, truth = simulate(300, 4, parse_start("2024-01-01"), 400, 3, 0)
    settings = load_settings()
    block, _ = run_history([decode_event(e.payload) for e in events], settings.warnings, DAY)
    scores = {
        t.customer_id: health_view(block, block.rows[t.customer_id])["score"]
        for t in truth
        if t.customer_id in block
    }
    left = [scores[t.customer_id] for t in truth if t.churned and t.customer_id in scores]
    stayed = [scores[t.customer_id] for t in truth if not t.churned and t.customer_id in scores]
    assert len(left) > 20 and len(stayed) > 20
    assert np.mean(stayed) > np.mean(left) + 20, (np.mean(stayed), np.mean(left))


def test_bands_of_scores_at_their_edges():
    from churnwatch.pipeline.health import band_codes, band_of

    scores = np.array([100, 70, 69, 40, 39, 0, UNKNOWN], dtype=np.uint8)
    assert band_codes(scores).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert [band_of(int(s)) for s in scores] == [
        "healthy",
        "healthy",
        "watch",
        "watch",
        "at_risk",
        "at_risk",
        None,
    ]
