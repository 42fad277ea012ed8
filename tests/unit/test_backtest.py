from __future__ import annotations

import json

import pytest

from churnwatch.models.backtest import backtest, format_table
from churnwatch.models.outcomes import base_rate, find_churns, honest_score, score
from churnwatch.pipeline.state import DAY
from tests.factories import T0, make_event

H = 90 * DAY


def test_churns_are_last_orders_followed_by_the_horizon_without_orders():
    orders = {"A": [0.0, 10 * DAY, 200 * DAY], "B": [0.0, 50 * DAY]}
    churns = find_churns(orders, data_end=260 * DAY, horizon=H)
    assert [(c.customer_id, c.last_order / DAY) for c in churns] == [("A", 10.0), ("B", 50.0)]


def test_score_counts_precision_recall_and_lead():
    orders = {"A": [0.0, 10 * DAY, 200 * DAY], "B": [0.0, 50 * DAY]}
    churns = find_churns(orders, data_end=300 * DAY, horizon=H)
    assert len(churns) == 3  # A after day 10, A after day 200, B after day 50
    # A warned on day 40 (no order until day 200: a hit, 60 days before the plain
    # rule's day 100); B warned on day 20 (B orders on day 50: a miss, yet within
    # 90 days before B's last order, so it counts for B's churn, 120 days early).
    result = score([("A", 40 * DAY), ("B", 20 * DAY)], orders, churns, 300 * DAY, H)
    assert result["precision"] == 0.5
    assert result["recall"] == pytest.approx(2 / 3, abs=0.001)
    assert result["median_lead_days"] == pytest.approx((60 + 120) / 2)


def test_warnings_about_customers_already_lost_are_not_early_warnings():
    orders = {"A": [0.0, 10 * DAY, 200 * DAY], "B": [0.0, 50 * DAY], "C": [0.0]}
    churns = find_churns(orders, data_end=300 * DAY, horizon=H)
    opened = [
        ("A", 40 * DAY),  # 30 days after A's order on day 10: early, 60 days before the flag
        (
            "B",
            20 * DAY,
        ),  # before B's last order (day 50): caught only when counted from 90 days before it
        ("B", 150 * DAY),  # B silent 100 days: the plain rule flagged it on day 140
        ("C", 100 * DAY),  # C silent 100 days: lost too
        ("A", 60 * DAY),  # early, but on a new model's first day: not steady state
    ]
    result = honest_score(
        opened, orders, churns, 300 * DAY, H, base=0.4, unsteady={60 * DAY}, unflagged_base=0.3
    )
    # today's figures count every episode
    assert result["episodes"] == 5 and result["recall"] == 0.5  # A after day 10, B
    assert result["lost_customer_notices"] == 2
    early = result["early"]
    assert early["episodes"] == 2  # A on day 40, B on day 20
    assert early["precision"] == 0.5  # A silent until day 200; B ordered on day 50
    assert early["precision_over_base"] == pytest.approx(0.1)
    assert early["precision_over_unflagged"] == pytest.approx(0.2)
    # from the last order on, only A's churn after day 10 is caught, 60 days early
    assert early["recall"] == pytest.approx(1 / 4, abs=0.001)
    assert early["median_lead_days"] == 60.0


def test_the_plain_rule_is_its_own_early_warning_with_no_lead():
    orders = {"A": [0.0, 10 * DAY, 200 * DAY], "B": [0.0, 50 * DAY]}
    churns = find_churns(orders, data_end=300 * DAY, horizon=H)
    plain = [(c.customer_id, c.flagged_at) for c in churns]
    result = honest_score(plain, orders, churns, 300 * DAY, H, base=None)
    assert result["lost_customer_notices"] == 0
    assert result["early"]["recall"] == 1.0 and result["early"]["median_lead_days"] == 0.0
    assert result["early"]["precision_over_base"] is None


def test_the_base_rate_since_a_day_counts_from_that_day():
    # A orders every 30 days for 600 days, then stops; B orders once on day 0.
    orders = {"A": [d * DAY for d in range(0, 600, 30)], "B": [0.0]}
    whole = base_rate(orders, 0.0, 800 * DAY, H)
    since = base_rate(orders, 0.0, 800 * DAY, H, since=100 * DAY)
    # from day 100: B is active (ordered within the year) and silent until day 365
    assert since is not None and whole is not None and since > whole
    assert base_rate(orders, 0.0, 800 * DAY, H, since=750 * DAY) is None  # no horizon left
    # customers not yet flagged (an order in the last 90 days): B drops out from day 91
    unflagged = base_rate(orders, 0.0, 800 * DAY, H, since=100 * DAY, active_days=90)
    assert unflagged is not None and unflagged < since


def test_warnings_are_also_judged_against_customers_of_the_same_rhythm():
    from churnwatch.models.outcomes import base_rates, rhythm

    # 20 weekly buyers (for a year already) who never stop, 20 one-order buyers
    # who never come back
    weekly = {f"W{i}": [d * DAY for d in range(-420, 700, 7)] for i in range(20)}
    once = {f"O{i}": [float(100 + i) * DAY] for i in range(20)}
    orders = weekly | once
    assert rhythm(orders["W0"], 400 * DAY) == 3 and rhythm(orders["O0"], 130 * DAY) == 0
    _, rates = base_rates(orders, 0.0, 700 * DAY, H, since=0.0, active_days=90)
    assert rates == {3: 0.0, 0: 1.0}  # weekly buyers never churn, one-order buyers always
    # warning one-order buyers 30 days after their order: every warning right, and
    # yet no better than any one-order buyer on any day
    opened = [(c, t[0] + 30 * DAY) for c, t in once.items()]
    churns = find_churns(orders, 700 * DAY, H)
    result = honest_score(opened, orders, churns, 700 * DAY, H, base=0.5, rhythm_rates=rates)[
        "early"
    ]
    assert result["precision"] == 1.0 and result["precision_over_base"] == 0.5
    assert result["like_base_rate"] == 1.0 and result["precision_over_like"] == 0.0


def test_backtest_writes_summary_and_every_episode(tmp_path, settings):
    from datetime import timedelta

    events = [make_event("order", at=T0 + timedelta(weeks=w)) for w in range(40)]
    events += [
        make_event("contact", customer_id="C2", at=T0 + timedelta(weeks=w)) for w in range(60)
    ]
    events.sort(key=lambda e: e.occurred_at)
    summary = backtest(events, settings.warnings, 86_400, 90, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert set(saved["rules"]) >= {
        "sales_drop",
        "overdue_debt",
        "cooling_engagement",
        "complaint_trouble",
        "plain_90_day",
    }
    assert saved["rules"]["plain_90_day"]["recall"] == 1.0
    assert saved["rules"]["plain_90_day"]["median_lead_days"] == 0.0
    assert saved["rules"]["plain_90_day"]["early"]["recall"] == 1.0
    assert "lost_customer_notices" in saved["rules"]["sales_drop"]
    rows = (tmp_path / "warnings.csv").read_text().splitlines()
    assert rows[0].startswith("warning_id,customer_id,warning_type,status")
    assert any(",sales_drop,opened," in row for row in rows[1:])


@pytest.fixture(scope="module")
def simulated():
    from churnwatch.pipeline.events import decode_event
    from churnwatch.producers.simulator import parse_start, simulate

    events, _ = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    return [decode_event(e.payload) for e in events]


def test_a_walk_forward_model_never_learns_from_after_its_day(simulated, settings):
    import numpy as np

    from churnwatch.models.backtest import walk_forward
    from churnwatch.models.dataset import build_training_set, cutoffs_every
    from churnwatch.pipeline.scoring import INPUT_FEATURES
    from churnwatch.pipeline.state import to_epoch

    served = walk_forward(simulated, settings.warnings, 86_400, settings.model, 28)[1]
    assert len(served) >= 3
    assert [s.serving_from for s in served] == sorted(s.serving_from for s in served)
    assert [s.train_rows for s in served] == sorted(s.train_rows for s in served)
    # each knows its training rows' churn rate, as a worker's model knows it from the
    # card: the book the churn-risk entry and the health score's risk part are set by
    # (before 2026-12-08 the backtest's models had none: an entry for a 50% book)
    assert all(0 < s.model.book_churn_rate < 0.5 for s in served)
    # The model serving from day D, retrained on a history cut a week after D,
    # is the same model: nothing after D went into it.
    day = served[1].serving_from
    cut = [e for e in simulated if to_epoch(e.occurred_at) < day + 7 * DAY]
    again = {
        s.model.version: s
        for s in walk_forward(cut, settings.warnings, 86_400, settings.model, 28)[1]
    }
    assert served[1].model.version in again
    rows = build_training_set(
        simulated, cutoffs_every(simulated, 28, 90)[-1:], 90, settings.warnings
    )[list(INPUT_FEATURES)].to_numpy(dtype=float)
    np.testing.assert_array_equal(
        again[served[1].model.version].model.probabilities(rows),
        served[1].model.probabilities(rows),
    )
    # ... while the next retraining, which has a month more labels, differs.
    assert not np.array_equal(
        served[2].model.probabilities(rows), served[1].model.probabilities(rows)
    )


def test_backtest_with_the_walk_forward_model_scores_churn_risk(simulated, settings, tmp_path):
    import csv

    summary = backtest(
        simulated, settings.warnings, 86_400, 90, tmp_path, model_settings=settings.model
    )
    model = summary["model"]
    assert model["versions"][0]["version"] == f"backtest-{model['serving_from']}"
    risk = summary["rules"]["churn_risk"]
    assert risk["episodes"] > 0 and risk["recall"] > 0
    # the simulated churners are easy: warning on the model beats warning anyone
    assert risk["precision"] > model["base_rate_since"] + 0.10
    with (tmp_path / "warnings.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["warning_type"] == "churn_risk"]
    assert rows and all(r["model_version"].startswith("backtest-") for r in rows)
    # no churn-risk warning before the first model existed, none scored by a later one
    first = min(v["version"] for v in model["versions"]).removeprefix("backtest-")
    assert min(r["opened_at"][:10] for r in rows) >= first
    for r in rows:
        assert r["model_version"].removeprefix("backtest-") <= r["at"][:10]
        assert 0 <= float(r["churn_probability"]) <= 1
    rules_only = backtest(simulated, settings.warnings, 86_400, 90, tmp_path / "rules")
    assert summary["rules"]["sales_drop"] == rules_only["rules"]["sales_drop"]
    # how each score ranks who churns next, at the cutoffs: the health score well
    # above chance, the model (on the rows it served, out of sample) too
    ranked = summary["ranking"]
    assert ranked["rows"] > 1000 and 0 < ranked["churn_rate"] < 1
    assert ranked["health_score"] > 0.7 and ranked["recency"] > 0.5
    assert ranked["model"] > 0.7 and 0 < ranked["model_rows"] < ranked["rows"]
    assert rules_only["ranking"]["health_score"] == ranked["health_score"]  # (no model part)
    assert "model" not in rules_only["ranking"]
    assert "Ranking the customers active at" in format_table(summary)
    # by value, and at an alert budget (3 owners in the simulation: 3 books)
    early = risk["early"]["value"]
    assert early["lost_revenue"] > 0 and 0 <= early["lost_revenue_warned_early"] <= 1
    assert set(early) >= {"precision_by_value", "top_20", "rest"}
    budget = summary["budget"]
    assert budget["books"] == 3 and budget["calls_per_cutoff"] == 10  # 5 a week, 14 days
    found = {name: f["churns_found"] for name, f in budget["strategies"].items()}
    assert set(found) == {"warnings", "longest_silence", "rhythm", "revenue_drop"}
    assert 0 < found["warnings"] <= budget["churns_reachable"]
    print("budget on the simulation:", found, "of", budget["churns_reachable"])
    table = format_table(summary)
    assert "At an alert budget of 5 customers a rep a week" in table
    assert "| warnings |" in table and "lost revenue warned early" in table
    # a type barely above customers like them is said to know little beyond the rhythm
    assert "churn_risk: +" not in table.split("not yet flagged, by orders")[1]
    import copy

    weak = copy.deepcopy(summary)
    weak["rules"]["churn_risk"]["early"]["precision_over_like"] = 0.012
    assert "churn_risk: +0.012 over customers like them: on this history it knows little" in (
        format_table(weak)
    )


def test_value_figures_weigh_each_churn_and_warning_by_the_customers_year_of_orders():
    """Five customers: one big (ten orders of 1,000 in a year) and four small (ten of
    10); all stop. Warning the big one and a small one early catches 97% of the
    lost revenue with two of the five churners; warning the big one late (under 30
    days before the plain rule) catches none of it."""
    from churnwatch.models.outcomes import OrderValues, value_figures

    days = range(0, 360, 36)  # ten orders, then silence
    amounts = {"BIG": 1000.0} | {f"S{i}": 10.0 for i in range(4)}
    placed = {c: [(d * DAY, a) for d in days] for c, a in amounts.items()}
    orders = {c: [t for t, _ in p] for c, p in placed.items()}
    values = OrderValues(placed)
    assert values.top == {"BIG"} and values.at("BIG", 324 * DAY) == 10_000.0
    assert values.at("BIG", 324 * DAY + 365 * DAY) == 0.0
    churns = find_churns(orders, 800 * DAY, H)
    assert len(churns) == 5
    early = [("BIG", 330 * DAY), ("S0", 330 * DAY), ("S1", 200 * DAY)]  # S1: before its last
    v = value_figures(early, orders, churns, 800 * DAY, H, values)
    assert v["lost_revenue"] == 10_000.0 + 4 * 100.0
    assert v["lost_revenue_warned_early"] == round(10_100 / 10_400, 3)
    assert v["recall_early"] == 0.4  # BIG and S0 (S1's warning came before its last order)
    assert v["precision"] == round(2 / 3, 3)  # S1 ordered again after its warning
    assert v["precision_by_value"] == round(10_100 / (10_100 + values.at("S1", 200 * DAY)), 3)
    assert v["top_20"]["churns"] == 1 and v["top_20"]["lost_revenue_warned_early"] == 1.0
    assert v["rest"]["churns"] == 4 and v["rest"]["recall_early"] == 0.25
    late = value_figures([("BIG", 324 * DAY + H - 10 * DAY)], orders, churns, 800 * DAY, H, values)
    assert late["lost_revenue_warned_early"] == 0.0 and late["top_20"]["recall_early"] == 0.0
