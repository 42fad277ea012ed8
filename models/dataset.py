"""Point-in-time training set: features as of each cutoff, labels from what came after.

For each cutoff date, every active customer (an order in the 365 days before)
gets one row: its features computed with the pipeline's own functions from
events strictly before the cutoff, and the label "churned" = no order in the
``horizon_days`` from the cutoff on. Nothing at or after a cutoff reaches its
rows' features, so training sees exactly what the stream would have seen.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.apply import apply_event
from churnwatch.pipeline.events import CustomerEvent, OrderPlaced
from churnwatch.pipeline.health import UNKNOWN, health_of
from churnwatch.pipeline.processing import by_segment
from churnwatch.pipeline.scoring import INPUT_FEATURES, feature_matrix
from churnwatch.pipeline.state import DAY, StateBlock, to_epoch

ACTIVE_DAYS = 365


def order_times(events: list[CustomerEvent]) -> dict[str, list[float]]:
    """Each customer's order times (epoch seconds), oldest first."""
    orders: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if isinstance(event, OrderPlaced):
            orders[event.customer_id].append(event.epoch)
    for times in orders.values():
        times.sort()
    return orders


def order_amounts(events: Iterable[CustomerEvent]) -> dict[str, list[tuple[float, float]]]:
    """Each customer's orders as (epoch seconds, amount), in event order."""
    orders: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if isinstance(event, OrderPlaced):
            orders[event.customer_id].append((event.epoch, event.amount))
    return orders


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


def _order_summary(times: list[float], before: int, cutoff: float) -> dict[str, float]:
    """The order history summary BG/NBD reads (``rfm_*``; not model inputs)."""
    first, last = times[0], times[before - 1]
    year_ago = bisect.bisect_left(times, cutoff - ACTIVE_DAYS * DAY)
    return {
        "rfm_repeat_orders": float(before - 1),
        "rfm_last_order_age_days": (last - first) / DAY,
        "rfm_age_days": (cutoff - first) / DAY,
        "rfm_orders_52w": float(before - year_ago),
    }


def training_rows(
    states: StateBlock,
    cutoff: datetime,
    orders: dict[str, list[float]],
    horizon: float,
    thresholds: WarningThresholds,
) -> list[dict[str, object]]:
    """The rows of one cutoff, from ``states`` holding every event strictly before it."""
    at = to_epoch(cutoff)
    last_order = states.used()["last_order_at"]
    active = np.flatnonzero((last_order != 0) & (at - last_order <= ACTIVE_DAYS * DAY))
    if not len(active):
        return []
    rows: list[dict[str, object]] = []
    matrix = np.empty((len(active), len(INPUT_FEATURES)))
    health = np.full(len(active), np.nan)
    for positions, t, columns in by_segment(states, active, at, thresholds):
        matrix[positions] = feature_matrix(columns)
        score, _ = health_of(columns, t)
        health[positions] = np.where(score == UNKNOWN, np.nan, score)
    for row, inputs, score in zip(active.tolist(), matrix.tolist(), health, strict=True):
        customer_id = states.customer_ids[row]
        times = orders[customer_id]
        i = bisect.bisect_left(times, at)
        churned = not (i < len(times) and times[i] < at + horizon)
        rows.append(
            {
                "cutoff": cutoff,
                "customer_id": customer_id,
                **dict(zip(INPUT_FEATURES, inputs, strict=True)),
                **_order_summary(times, i, at),
                "health_score": float(score),  # without the model's part (not an input)
                "churned": int(churned),
            }
        )
    return rows


def build_training_set(
    events: Iterable[CustomerEvent],
    cutoffs: list[datetime],
    horizon_days: float,
    thresholds: WarningThresholds,
    progress: Callable[[list[CustomerEvent]], Iterable[CustomerEvent]] = iter,
) -> pd.DataFrame:
    """One row per (cutoff, active customer).

    Columns: ``cutoff``, ``customer_id``, the model inputs
    (:data:`~pipeline.scoring.INPUT_FEATURES`), the order summary ``rfm_*``
    the baselines read, the health score (:mod:`pipeline.health`, without the
    model's part; NaN where not known), and the label ``churned`` (0/1). ``progress`` wraps
    the event loop (e.g. a progress bar).
    """
    ordered = sorted(events, key=lambda e: e.occurred_at)
    orders = order_times(ordered)
    horizon = horizon_days * DAY
    states = StateBlock()
    rows: list[dict[str, object]] = []
    pending = sorted(cutoffs)
    index = 0
    for event in progress(ordered):
        while index < len(pending) and event.occurred_at >= pending[index]:
            # strictly before the cutoff: this event is not in yet
            rows += training_rows(states, pending[index], orders, horizon, thresholds)
            index += 1
        apply_event(states.state(event.customer_id), event)
    for cutoff in pending[index:]:
        rows += training_rows(states, cutoff, orders, horizon, thresholds)
    return pd.DataFrame(rows)
