"""Backtest the warning rules on a history, in batch (no broker).

Run: ``churnwatch backtest --events PATH --mapping MAPPING --out DIR``.

The history goes through the worker's own logic
(:func:`pipeline.processing.run_history`), then every warning episode is
scored against what the customer did next:

- a **churn** is a last order followed by ``horizon`` days without one (only
  counted where the data runs that long after it); the plain rule flags it on
  the day the horizon is up;
- **precision** of a warning type: the share of its episodes (opened at least
  ``horizon`` days before the data ends) after whose opening the customer
  placed no order within ``horizon`` days;
- **recall**: the share of churns for which an episode of that type opened
  between ``horizon`` days before the last order and the day the plain rule
  flags it (inclusive, so the plain rule itself has recall 1 and lead 0);
- **median lead time**: for those churns, how many days before the plain
  rule's flag the warning opened;
- **base rate**: the precision of warning a random active customer (one that
  ordered in the past year) on a random day.
"""

from __future__ import annotations

import bisect
import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnwatch.settings import WarningThresholds
from pipeline.events import CustomerEvent, OrderPlaced, WarningRecord
from pipeline.features import DAY, to_epoch
from pipeline.processing import run_history

RULES = ("sales_drop", "overdue_debt", "cooling_engagement", "complaint_trouble")


@dataclass(frozen=True)
class Churn:
    customer_id: str
    last_order: float
    flagged_at: float  # last_order + horizon: when the plain rule sees it


def order_times(events: list[CustomerEvent]) -> dict[str, list[float]]:
    orders: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if isinstance(event, OrderPlaced):
            orders[event.customer_id].append(to_epoch(event.occurred_at))
    for times in orders.values():
        times.sort()
    return orders


def find_churns(orders: dict[str, list[float]], data_end: float, horizon: float) -> list[Churn]:
    churns = []
    for customer, times in orders.items():
        for i, t in enumerate(times):
            next_order = times[i + 1] if i + 1 < len(times) else None
            gap_end = next_order if next_order is not None else data_end
            if gap_end - t >= horizon and t + horizon <= data_end:
                churns.append(Churn(customer, t, t + horizon))
    return churns


def _ordered_within(times: list[float], start: float, horizon: float) -> bool:
    i = bisect.bisect_right(times, start)
    return i < len(times) and times[i] <= start + horizon


def score(
    opened: list[tuple[str, float]],
    orders: dict[str, list[float]],
    churns: list[Churn],
    data_end: float,
    horizon: float,
) -> dict[str, Any]:
    """Precision, recall and lead time of one warning type's openings (customer, time)."""
    judged = [(c, t) for c, t in opened if t + horizon <= data_end]
    hits = sum(not _ordered_within(orders.get(c, []), t, horizon) for c, t in judged)
    by_customer: dict[str, list[float]] = defaultdict(list)
    for c, t in opened:
        by_customer[c].append(t)
    leads = []
    for churn in churns:
        times = [
            t
            for t in by_customer.get(churn.customer_id, [])
            if churn.last_order - horizon <= t <= churn.flagged_at
        ]
        if times:
            leads.append((churn.flagged_at - min(times)) / DAY)
    return {
        "warned": len({c for c, _ in opened}),
        "episodes": len(opened),
        "precision": round(hits / len(judged), 3) if judged else None,
        "recall": round(len(leads) / len(churns), 3) if churns else None,
        "median_lead_days": round(statistics.median(leads), 1) if leads else None,
    }


def base_rate(
    orders: dict[str, list[float]], data_start: float, data_end: float, horizon: float
) -> float | None:
    """P(no order within the horizon) for an active customer on a random (weekly) day."""
    hits = total = 0
    day = data_start + 365 * DAY if data_end - data_start > 365 * DAY + horizon else data_start
    day = max(day, data_start + horizon)
    while day + horizon <= data_end:
        for times in orders.values():
            i = bisect.bisect_right(times, day)
            if i and day - times[i - 1] <= 365 * DAY:
                total += 1
                hits += not (i < len(times) and times[i] <= day + horizon)
        day += 7 * DAY
    return round(hits / total, 3) if total else None


def backtest(
    events: list[CustomerEvent],
    thresholds: WarningThresholds,
    sweep_every_seconds: float,
    horizon_days: float,
    out: Path,
) -> dict[str, Any]:
    """Run the rules over ``events`` (time-ordered); write warnings.csv and summary.json."""
    if not events:
        raise ValueError("no events to backtest")
    horizon = horizon_days * DAY
    _, records = run_history(events, thresholds, sweep_every_seconds)
    orders = order_times(events)
    data_start = to_epoch(events[0].occurred_at)
    data_end = to_epoch(events[-1].occurred_at)
    churns = find_churns(orders, data_end, horizon)

    opened: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for record in records:
        if record.status == "opened":
            opened[record.warning_type].append((record.customer_id, to_epoch(record.opened_at)))
    rules = {r: score(opened[r], orders, churns, data_end, horizon) for r in RULES}
    plain = [(c.customer_id, c.flagged_at) for c in churns]
    rules["plain_90_day" if horizon_days == 90 else f"plain_{horizon_days:g}_day"] = score(
        plain, orders, churns, data_end, horizon
    )
    summary = {
        "horizon_days": horizon_days,
        "customers": len({e.customer_id for e in events}),
        "events": len(events),
        "churns": len(churns),
        "base_rate": base_rate(orders, data_start, data_end, horizon),
        "rules": rules,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_warnings_csv(records, out / "warnings.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def write_warnings_csv(records: list[WarningRecord], path: Path) -> None:
    columns = [
        "warning_id",
        "customer_id",
        "warning_type",
        "status",
        "severity",
        "opened_at",
        "at",
        "summary",
        "evidence",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in records:
            writer.writerow(
                [
                    r.warning_id,
                    r.customer_id,
                    r.warning_type,
                    r.status,
                    r.severity,
                    r.opened_at.isoformat(),
                    r.at.isoformat(),
                    r.summary,
                    json.dumps(r.evidence, sort_keys=True),
                ]
            )


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    lines = [
        f"base rate {summary['base_rate']}, churns {summary['churns']}, "
        f"horizon {summary['horizon_days']:g} days",
        "",
        "| rule | customers warned | episodes | precision | recall | median lead (days) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["rules"].items():
        lines.append(
            f"| {name} | {r['warned']} | {r['episodes']} | {r['precision']} | {r['recall']} "
            f"| {r['median_lead_days']} |"
        )
    return "\n".join(lines)
