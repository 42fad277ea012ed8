from __future__ import annotations

from datetime import timedelta

import pytest

from churnwatch.pipeline.episodes import evaluate
from churnwatch.pipeline.events import WarningRecord
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.rules import Risk
from tests.factories import T0

DAY = 86_400


def opened(records: list[WarningRecord], kind: str) -> list[WarningRecord]:
    return [r for r in records if r.warning_type == kind and r.status == "opened"]


def weekly_orders(event_factory, amounts, start=T0):
    return [
        event_factory("order", at=start + timedelta(weeks=w), amount=a)
        for w, a in enumerate(amounts)
    ]


def test_sales_drop_opens_with_evidence_and_resolves_when_orders_come_back(settings, event_factory):
    amounts = [100.0] * 40 + [20.0] * 10 + [100.0] * 12
    _, records = run_history(weekly_orders(event_factory, amounts), settings.warnings, DAY)
    drops = [r for r in records if r.warning_type == "sales_drop"]
    # as the low weeks fill the recent window the drop deepens: one escalation
    assert [r.status for r in drops] == ["opened", "escalated", "resolved"]
    assert drops[0].severity == "medium" and drops[1].severity == "high"
    assert drops[1].evidence["amount_change_pct"] < drops[0].evidence["amount_change_pct"]
    first = drops[0]
    assert T0 + timedelta(weeks=40) < first.opened_at < T0 + timedelta(weeks=46)
    assert first.evidence["amount_change_pct"] <= -60
    assert first.evidence["orders_expected"] == pytest.approx(8, abs=0.5)
    assert "usually" in first.summary
    assert drops[1].warning_id == drops[2].warning_id == first.warning_id


def test_a_customer_hovering_around_the_threshold_gets_one_episode(settings, event_factory):
    # 8-week revenue swings around 40% of the baseline, the enter threshold.
    amounts = [100.0] * 40 + [28.0, 50.0] * 15
    _, records = run_history(weekly_orders(event_factory, amounts), settings.warnings, DAY)
    assert len(opened(records, "sales_drop")) == 1


def test_silence_beyond_the_usual_rhythm_is_a_sales_drop(settings, event_factory):
    events = weekly_orders(event_factory, [100.0] * 40)
    # something else keeps time moving: contacts continue after the orders stop
    events += [
        event_factory("contact", customer_id="C2", at=T0 + timedelta(weeks=w))
        for w in range(40, 52)
    ]
    events.sort(key=lambda e: e.occurred_at)
    _, records = run_history(events, settings.warnings, DAY)
    (drop,) = opened(records, "sales_drop")
    silence = drop.evidence["days_since_last_order"]
    assert 28 <= silence <= 30


def test_overdue_debt_opens_after_30_days_past_due(settings, event_factory):
    events = [
        event_factory("invoice", invoice_id="A", amount=900.0),
        *(event_factory("contact", at=T0 + timedelta(days=d)) for d in range(1, 90, 3)),
    ]
    _, records = run_history(events, settings.warnings, DAY)
    (warning,) = opened(records, "overdue_debt")
    assert warning.evidence["overdue_amount"] == 900.0
    assert warning.evidence["max_days_past_due"] == pytest.approx(30, abs=1)


def test_small_overdue_amounts_do_not_warn(settings, event_factory):
    events = [
        event_factory("invoice", invoice_id="A", amount=20.0),
        *(event_factory("contact", at=T0 + timedelta(days=d)) for d in range(1, 120, 3)),
    ]
    _, records = run_history(events, settings.warnings, DAY)
    assert opened(records, "overdue_debt") == []


def test_cooling_engagement_when_a_chatty_customer_goes_quiet(settings, event_factory):
    contacts = [event_factory("contact", at=T0 + timedelta(days=4 * i)) for i in range(90)]
    orders = weekly_orders(event_factory, [100.0] * 70)
    events = sorted(contacts + orders, key=lambda e: e.occurred_at)
    _, records = run_history(events, settings.warnings, DAY)
    (cooling,) = opened(records, "cooling_engagement")
    assert cooling.opened_at > T0 + timedelta(days=4 * 89)
    assert cooling.evidence["inbound_expected"] >= 10


def test_warning_ids_are_deterministic(settings, event_factory):
    amounts = [100.0] * 40 + [10.0] * 10
    events = weekly_orders(event_factory, amounts)
    _, first = run_history(events, settings.warnings, DAY)
    _, second = run_history(events, settings.warnings, DAY)
    assert [r.warning_id for r in first] == [r.warning_id for r in second]
    assert first


def test_key_accounts_can_have_their_own_thresholds(event_factory):
    from churnwatch.core.settings import load_settings
    from churnwatch.pipeline.events import CustomerUpdated

    settings = load_settings(
        warnings={"segments": {"key_account": {"sales_drop": {"enter_ratio": 0.7}}}}
    )
    # -45%: not a drop at the default 40% threshold, one for a key account
    amounts = [100.0] * 40 + [55.0] * 12
    for segment, expected in (("standard", 0), ("key_account", 1)):
        profile = CustomerUpdated(
            event_id=f"cust-{segment}",
            customer_id="C1",
            occurred_at=T0,
            name="Acme",
            segment=segment,
        )
        events = [profile, *weekly_orders(event_factory, amounts)]
        _, records = run_history(events, settings.warnings, DAY)
        assert len(opened(records, "sales_drop")) == expected, segment


def test_an_episode_stays_open_for_the_minimum_length(settings, event_factory):
    events = [
        event_factory("invoice", invoice_id="A", amount=900.0),
        event_factory("payment", invoice_id="A", amount=900.0, at=T0 + timedelta(days=62)),
        *(event_factory("contact", at=T0 + timedelta(days=d)) for d in range(1, 120, 3)),
    ]
    events.sort(key=lambda e: e.occurred_at)
    _, records = run_history(events, settings.warnings, DAY)
    opened_at, resolved_at = [r.at for r in records if r.warning_type == "overdue_debt"]
    # paid 2 days after opening, but the episode lasts the minimum 14 days
    assert (resolved_at - opened_at).days == 14


def _silent_after(event_factory, gaps_days, customer_id="C1", segment=None):
    """Orders ``gaps_days`` apart, then silence; another customer keeps time moving."""
    from churnwatch.pipeline.events import CustomerUpdated

    at = T0
    events = (
        []
        if segment is None
        else [
            CustomerUpdated(
                event_id=f"cust-{customer_id}",
                customer_id=customer_id,
                occurred_at=T0,
                name="Acme",
                segment=segment,
            )
        ]
    )
    events.append(event_factory("order", customer_id=customer_id, at=at, amount=100.0))
    for gap in gaps_days:
        at += timedelta(days=gap)
        events.append(event_factory("order", customer_id=customer_id, at=at, amount=100.0))
    events += [
        event_factory("contact", customer_id="C2", at=at + timedelta(days=d))
        for d in range(1, 400, 3)
    ]
    return sorted(events, key=lambda e: e.occurred_at)


def _silence_at_warning(records) -> float | None:
    drops = opened(records, "sales_drop")
    return drops[0].evidence["days_since_last_order"] if drops else None


def test_a_thin_history_is_judged_by_the_book_pace_and_warned_only_after_a_long_pause(
    settings, event_factory
):
    # Two orders a month apart say little: judged with the prior (monthly, worth
    # one gap), the pause is 1 in 20 only after about 208 days. Twenty orders at
    # the same pace are sure of it: about 97 days.
    _, thin = run_history(_silent_after(event_factory, [30]), settings.warnings, DAY)
    _, long = run_history(_silent_after(event_factory, [30] * 19), settings.warnings, DAY)
    assert 205 <= _silence_at_warning(thin) <= 212
    assert 95 <= _silence_at_warning(long) <= 100
    (warning,) = opened(thin, "sales_drop")
    assert warning.evidence["usual_gap_days"] == 30.0
    assert warning.evidence["chance_of_such_a_pause_pct"] <= 5
    assert "1 time in 2" in warning.summary  # "1 time in 20": the odds are in the text
    assert "after only 2 order(s); customers like it order about every 30 days" in (warning.summary)
    (regular,) = opened(long, "sales_drop")
    assert "usually one every 30 days" in regular.summary  # its own pace, not the book's


def test_a_segment_pace_judges_its_thin_histories(event_factory):
    from churnwatch.core.settings import load_settings

    settings = load_settings(
        warnings={"segments": {"weekly": {"sales_drop": {"prior_gap_days": 7}}}}
    )
    _, book = run_history(_silent_after(event_factory, [30]), settings.warnings, DAY)
    _, weekly = run_history(
        _silent_after(event_factory, [30], segment="weekly"), settings.warnings, DAY
    )
    # the weekly segment's prior makes two monthly orders a faster pace (18.5 days)
    assert _silence_at_warning(weekly) < _silence_at_warning(book) - 50
    (warning,) = opened(weekly, "sales_drop")
    assert warning.evidence["usual_gap_days"] == 18.5  # (7 + 30) / 2: prior and own gap


def test_an_uneven_rhythm_makes_a_long_pause_less_surprising(settings):
    import math

    from churnwatch.pipeline.rules import silence_chance

    t = settings.warnings.sales_drop
    steady, _ = silence_chance(60.0, 21, 14.0, 0.3, t)
    bursty, _ = silence_chance(60.0, 21, 14.0, 2.0, t)
    assert bursty > 2 * steady
    # with many steady gaps the chance is close to a Poisson rate's
    many, pace = silence_chance(60.0, 2001, 14.0, 0.3, t)
    assert pace == pytest.approx(14.0, rel=0.01)
    assert many == pytest.approx(math.exp(-60 / 14), rel=0.05)


def test_an_open_churn_risk_warning_gets_worse_as_the_probability_climbs(settings, event_factory):
    """churn_risk's severity follows the probability at book-relative steps, so a
    risk that climbs after the warning opened is told again ("escalated"), with
    the probability of that moment; a small rise within a step says nothing."""
    t = settings.warnings
    states, _ = run_history(weekly_orders(event_factory, [100.0] * 30), t, DAY)
    (state,) = states.values()
    enter, leave = t.churn_risk.bounds(0.06)  # a 6% book: opens at 0.154
    medium, high = t.churn_risk.severity_steps(enter)
    assert (medium, high) == pytest.approx((0.3655, 0.577))
    as_of = state.last_order_at + 7 * DAY
    told = []
    for day, p in enumerate([0.10, 0.16, 0.30, 0.40, 0.62]):
        risk = Risk(p, "v1", 90.0, lambda: "main reasons: none", enter, leave)
        told += [
            (r.status, r.severity, r.churn_probability)
            for r in evaluate(state, as_of + day * DAY, t, risk)
            if r.warning_type == "churn_risk"
        ]
    assert told == [
        ("opened", "low", 0.16),
        ("escalated", "medium", 0.4),
        ("escalated", "high", 0.62),
    ]
