from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.events import WarningRecord
from pipeline.processing import run_history
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
    from pipeline.events import CustomerUpdated

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
