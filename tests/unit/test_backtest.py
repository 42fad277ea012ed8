from __future__ import annotations

import json

import pytest

from models.backtest import backtest, find_churns, score
from pipeline.features import DAY
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
    rows = (tmp_path / "warnings.csv").read_text().splitlines()
    assert rows[0].startswith("warning_id,customer_id,warning_type,status")
    assert any(",sales_drop,opened," in row for row in rows[1:])
