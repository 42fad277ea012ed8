"""Point-in-time training set: features as of each cutoff, labels from what came after.

For each cutoff date, every active customer (an order in the 365 days before)
gets one row: its features computed with the pipeline's own functions from
events strictly before the cutoff, and the label "churned" = no order in the
``horizon_days`` from the cutoff on. Nothing at or after a cutoff reaches its
rows' features, so training sees exactly what the stream would have seen.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timedelta

import pandas as pd

from churnwatch.settings import WarningThresholds
from models.backtest import order_times
from pipeline.events import CustomerEvent
from pipeline.features import (
    DAY,
    QUADRANTS,
    CustomerState,
    apply_event,
    new_state,
    read_features,
    to_epoch,
)

#: Features that are not model inputs (identifiers, or not numbers).
NOT_INPUTS = {"as_of", "quadrant"}
ACTIVE_DAYS = 365


def cutoffs_every(
    events: list[CustomerEvent], every_days: int, horizon_days: float
) -> list[datetime]:
    """Cutoffs every ``every_days``, from 90 days into the data to the last full horizon."""
    first, last = events[0].occurred_at, events[-1].occurred_at
    out = []
    cutoff = (first + timedelta(days=90)).replace(hour=0, minute=0, second=0, microsecond=0)
    while cutoff + timedelta(days=horizon_days) <= last:
        out.append(cutoff)
        cutoff += timedelta(days=every_days)
    return out


def _row(state: CustomerState, cutoff: float, thresholds: WarningThresholds) -> dict[str, object]:
    features = read_features(
        state,
        cutoff,
        thresholds.recent_weeks,
        thresholds.baseline_weeks,
        thresholds.high_value_revenue,
    )
    row: dict[str, object] = {}
    for name, value in asdict(features).items():
        if name in NOT_INPUTS:
            continue
        row[name] = math.nan if value is None else float(value)
    for quadrant in sorted(set(QUADRANTS.values())):
        row[f"quadrant_{quadrant}"] = float(features.quadrant == quadrant)
    return row


def build_training_set(
    events: Iterable[CustomerEvent],
    cutoffs: list[datetime],
    horizon_days: float,
    thresholds: WarningThresholds,
) -> pd.DataFrame:
    """One row per (cutoff, active customer): ``cutoff, customer_id``, features, ``churned``."""
    ordered = sorted(events, key=lambda e: e.occurred_at)
    orders = order_times(ordered)
    horizon = horizon_days * DAY
    states: dict[str, CustomerState] = {}
    rows: list[dict[str, object]] = []
    pending = sorted(cutoffs)
    index = 0

    def snapshot(cutoff: datetime) -> None:
        at = to_epoch(cutoff)
        for customer_id, state in states.items():
            if not state.last_order_at or at - state.last_order_at > ACTIVE_DAYS * DAY:
                continue
            times = orders[customer_id]
            i = bisect.bisect_left(times, at)
            churned = not (i < len(times) and times[i] < at + horizon)
            rows.append(
                {
                    "cutoff": cutoff,
                    "customer_id": customer_id,
                    **_row(state, at, thresholds),
                    "churned": int(churned),
                }
            )

    for event in ordered:
        while index < len(pending) and event.occurred_at >= pending[index]:
            snapshot(pending[index])  # strictly before the cutoff: this event is not in yet
            index += 1
        state = states.get(event.customer_id)
        if state is None:
            state = states[event.customer_id] = new_state(event.customer_id)
        apply_event(state, event)
    for cutoff in pending[index:]:
        snapshot(cutoff)
    return pd.DataFrame(rows)
