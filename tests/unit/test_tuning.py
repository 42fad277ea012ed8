from __future__ import annotations

import pytest

from churnwatch.core.settings import load_settings
from churnwatch.models.tuning import DEFAULT_LEVEL, LADDERS, Rung, choose


def test_the_default_rung_holds_the_default_thresholds(settings):
    for kind, ladder in LADDERS.items():
        current = getattr(settings.warnings, kind).model_dump()
        assert {k: current[k] for k in ladder[DEFAULT_LEVEL]} == ladder[DEFAULT_LEVEL], kind


def _rung(level, over_like, recall, warned, judged=50):
    figures = {
        "precision": 0.5 + over_like,
        "precision_over_like": over_like,
        "recall": recall,
        "median_lead_days": 10.0,
        "value": {"lost_revenue_warned_early": warned},
    }
    return Rung(level, {}, {**figures, "judged": judged}, figures)


def test_the_rung_warning_the_most_lost_revenue_within_the_like_for_like_goal_is_chosen():
    rungs = [
        _rung(0, 0.20, 0.1, 0.2),
        _rung(1, 0.10, 0.2, 0.5),  # fewer churns than rung 0 would give, more revenue
        _rung(2, 0.02, 0.5, 0.7),  # misses the goal: barely better than customers like them
        _rung(3, 0.30, 0.9, 0.9, judged=5),  # too few episodes
    ]
    assert choose(rungs, 0.05, 20) is rungs[1]
    assert choose(rungs, 0.15, 20) is rungs[0]
    assert choose(rungs, 0.40, 20) is None


def test_tune_writes_settings_that_load_and_meet_the_goal_on_the_earlier_part(tmp_path, settings):
    from churnwatch.core.settings import DEFAULT_CONFIG
    from churnwatch.models.tuning import TuneError, qualifies, tune, write_settings
    from churnwatch.pipeline.events import decode_event
    from churnwatch.producers.simulator import parse_start, simulate

    sent, _ = simulate(150, 11, parse_start("2024-10-07"), 540, 3, 0)
    events = [decode_event(e.payload) for e in sent]
    # a small book: few episodes per rung, so a low bar for how many
    tuning = tune(events, settings.warnings, 86_400, 90, settings.model, min_episodes=5)
    assert set(tuning.rungs) == set(LADDERS)  # churn_risk too: a model served
    for kind, chosen in tuning.chosen.items():
        if chosen is not None:
            assert qualifies(chosen.earlier, 0.05, 5), kind
            assert "value" in chosen.earlier  # (what it was chosen by)
            assert chosen.earlier["precision_over_like"] is not None  # shown beside it
    assert any(tuning.chosen.values()), "some rung meets the goal on the simulated book"
    assert "" in tuning.paces  # the book's usual gap, fitted before the split

    out = tmp_path / "tuned.yaml"
    write_settings(tuning, DEFAULT_CONFIG, out, "simulated")
    tuned = load_settings(out)
    for kind, chosen in tuning.chosen.items():
        if chosen is not None:
            section = getattr(tuned.warnings, kind).model_dump()
            assert {k: section[k] for k in chosen.values} == chosen.values
    assert tuned.warnings.sales_drop.prior_gap_days == tuning.paces[""]
    for segment, pace in tuning.paces.items():
        assert tuned.warnings.for_segment(segment).sales_drop.prior_gap_days == pace
    assert tuned.kafka == settings.kafka  # the rest of the settings kept
    assert f"split at {tuning.split}" in out.read_text()

    with pytest.raises(TuneError, match="must fall between"):
        tune(
            events,
            settings.warnings,
            86_400,
            90,
            None,
            split_at=parse_start("2024-10-08"),
        )


def test_the_paces_are_the_median_gaps_of_customers_with_two_orders_before_the_split():
    from churnwatch.models.tuning import PACE_CUSTOMERS, book_paces

    day, split = 86_400.0, 1000 * 86_400.0
    # 20 customers ordering every 10 days, 15 every 40 days (the segment "slow"),
    # 10 with one order; after the split everyone orders daily, which must not count
    orders = {f"a{i}": [split - 30 * day, split - 20 * day, split - 10 * day] for i in range(20)}
    orders |= {f"b{i}": [split - 80 * day, split - 40 * day] for i in range(15)}
    orders |= {f"c{i}": [split - 5 * day] for i in range(10)}
    for times in orders.values():
        times += [split + k * day for k in range(1, 30)]
    slow = {f"b{i}": "slow" for i in range(15)}
    assert book_paces(orders, split, slow) == {"": 10.0}  # 15 are too few for a segment pace
    slow |= {f"a{i}": "slow" for i in range(20, 35)}
    orders |= {f"a{i}": [split - 90 * day, split - 50 * day] for i in range(20, 35)}
    assert book_paces(orders, split, slow) == {"": 40.0, "slow": 40.0}
    few = dict(list(orders.items())[: PACE_CUSTOMERS - 1])
    assert book_paces(few, split, {}) == {}
