"""Which customers a sweep must look at closely (pure, vectorised over a block).

:func:`changing` decides, for all customers of a block at once, the same "is
the condition active" and "how severe" as the rules of :mod:`pipeline.rules`.
A sweep then runs :func:`pipeline.episodes.evaluate` only for the customers
where an episode opens, resolves or gets worse; everyone else's evaluation
would return nothing. A test runs both ways over whole histories and demands
the same records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from churnwatch.core.thresholds import (
    ComplaintTroubleThresholds,
    CoolingEngagementThresholds,
    OverdueDebtThresholds,
    SalesDropThresholds,
    WarningThresholds,
)
from churnwatch.pipeline.events import WARNING_TYPES
from churnwatch.pipeline.features import FeatureColumns
from churnwatch.pipeline.rules import silence_chance
from churnwatch.pipeline.state import SEVERITIES

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def _grades(base: IntArray, revenue_52w: npt.NDArray[np.float64], t: WarningThresholds) -> IntArray:
    base = base + (revenue_52w >= t.high_value_revenue)
    return np.clip(base, 0, len(SEVERITIES) - 1)


def _sales_drop_many(
    c: FeatureColumns, t: SalesDropThresholds, all_t: WarningThresholds, is_open: BoolArray
) -> tuple[BoolArray, IntArray]:
    rw = all_t.recent_weeks
    expected_orders = c["orders_baseline_per_week"] * rw
    expected_amount = c["amount_baseline_per_week"] * rw
    baseline_known = c["history_weeks"] >= rw + all_t.baseline_weeks
    comparable = baseline_known & (expected_orders >= t.min_expected_orders)
    ratio = np.where(
        comparable & (expected_amount > 0), c["amount_recent"] / expected_amount, np.nan
    )
    since = c["days_since_last_order"]
    chance, _ = silence_chance(
        since, c["orders_total"], c["mean_order_gap_days"], c["order_regularity"], t
    )
    last_year = c["amount_same_weeks_last_year"]
    seasonal = ~np.isnan(last_year) & (
        (c["amount_recent"] >= t.seasonal_tolerance * last_year)
        | (last_year <= t.enter_ratio * expected_amount)
    )
    silence_limit = np.maximum(
        t.min_silence_days, t.longest_gap_margin * c["longest_gap_past_year_days"]
    )
    dropped = np.where(is_open, ratio < t.exit_ratio, ratio <= t.enter_ratio)
    silent = np.where(
        is_open,
        chance <= t.exit_silence_chance,
        (chance <= t.enter_silence_chance) & (np.nan_to_num(since) >= silence_limit),
    )
    active = (dropped | silent) & ~seasonal
    silence_path = silent & ~dropped
    base = np.where(
        silence_path,
        1 + (chance <= t.enter_silence_chance / 10),
        1 + (ratio <= t.enter_ratio / 2),
    )
    return active, _grades(base, c["revenue_52w"], all_t)


def _overdue_debt_many(
    c: FeatureColumns, t: OverdueDebtThresholds, all_t: WarningThresholds, is_open: BoolArray
) -> tuple[BoolArray, IntArray]:
    dpd, amount = c["max_days_past_due"], c["overdue_amount"]
    active = np.where(
        is_open,
        (dpd > t.exit_days_past_due) & (amount > 0),
        (dpd >= t.enter_days_past_due) & (amount >= t.min_overdue_amount),
    )
    base = np.where(dpd > 90, 3, np.where(dpd > 60, 2, 1))
    return active, _grades(base, c["revenue_52w"], all_t)


def _cooling_engagement_many(
    c: FeatureColumns, t: CoolingEngagementThresholds, all_t: WarningThresholds, is_open: BoolArray
) -> tuple[BoolArray, IntArray]:
    rw = all_t.recent_weeks
    expected = c["inbound_baseline_per_week"] * rw
    baseline_known = c["history_weeks"] >= rw + all_t.baseline_weeks
    comparable = baseline_known & (expected >= t.min_expected_contacts)
    ratio = np.where(comparable, c["inbound_recent"] / expected, np.nan)
    silence = c["days_since_last_inbound"]
    silence_known = ~np.isnan(silence) & (c["history_weeks"] >= all_t.baseline_weeks)
    usual_gap = np.where(expected > 0, 7 * rw / expected, 0.0)
    quiet = np.nan_to_num(silence)
    cooled = np.where(is_open, ratio < t.exit_ratio, ratio <= t.enter_ratio)
    silent = silence_known & np.where(
        is_open,
        quiet >= np.maximum(t.exit_silence_days, t.exit_silence_gaps * usual_gap),
        quiet >= np.maximum(t.enter_silence_days, t.enter_silence_gaps * usual_gap),
    )
    base = np.where(np.nan_to_num(ratio) > t.enter_ratio / 2, 1, 2)
    return cooled | silent, _grades(base, c["revenue_52w"], all_t)


def _complaint_trouble_many(
    c: FeatureColumns, t: ComplaintTroubleThresholds, all_t: WarningThresholds, is_open: BoolArray
) -> tuple[BoolArray, IntArray]:
    share = np.nan_to_num(c["returns_share_13w"])
    c4w, oldest, returns_13w = (
        c["complaints_4w"],
        c["oldest_open_complaint_days"],
        c["returns_13w"],
    )
    surge = np.where(
        is_open,
        c4w > t.exit_complaints_4w,
        c4w >= np.maximum(t.enter_complaints_4w, t.surge_factor * c["complaints_usual_4w"]),
    )
    stale = np.where(is_open, oldest > t.exit_unresolved_days, oldest >= t.enter_unresolved_days)
    returns = np.where(is_open, share > t.exit_returns_share, share >= t.enter_returns_share) & (
        returns_13w >= t.min_returns_amount
    )
    reasons = surge.astype(np.int64) + stale + returns
    base = 1 + (c["max_open_severity"] >= 3) + (reasons > 1)
    return reasons > 0, _grades(base, c["revenue_52w"], all_t)


def _churn_grades(
    probability: npt.NDArray[np.float64], revenue_52w: Any, t: WarningThresholds
) -> IntArray:
    base = np.where(probability >= 0.9, 2, np.where(probability >= 0.8, 1, 0))
    return _grades(base, revenue_52w, t)


def changing(
    columns: FeatureColumns,
    thresholds: WarningThresholds,
    severity: npt.NDArray[np.int8],
    probability: npt.NDArray[np.float64] | None,
    churn_bounds: tuple[float, float],
) -> tuple[BoolArray, BoolArray]:
    """Which customers' episodes change: (any episode opens, resolves or worsens;
    the churn-risk episode opens or worsens, so its reasons are needed).

    ``thresholds`` are the customers' segment's; ``severity`` is each open
    episode's severity index per :data:`WARNING_TYPES` (-1: none open);
    ``probability`` the model's scores (None: rules only), and ``churn_bounds`` the
    probabilities the churn-risk warning opens at and resolves below
    (:meth:`ChurnRiskThresholds.bounds` for the serving model's book).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _changing(columns, thresholds, severity, probability, churn_bounds)


def _changing(
    columns: FeatureColumns,
    thresholds: WarningThresholds,
    severity: npt.NDArray[np.int8],
    probability: npt.NDArray[np.float64] | None,
    churn_bounds: tuple[float, float],
) -> tuple[BoolArray, BoolArray]:
    rules: dict[str, Callable[[BoolArray], tuple[BoolArray, IntArray]]] = {
        "sales_drop": lambda o: _sales_drop_many(columns, thresholds.sales_drop, thresholds, o),
        "overdue_debt": lambda o: _overdue_debt_many(
            columns, thresholds.overdue_debt, thresholds, o
        ),
        "cooling_engagement": lambda o: _cooling_engagement_many(
            columns, thresholds.cooling_engagement, thresholds, o
        ),
        "complaint_trouble": lambda o: _complaint_trouble_many(
            columns, thresholds.complaint_trouble, thresholds, o
        ),
    }
    change = np.zeros(len(severity), bool)
    speaks = np.zeros(len(severity), bool)
    for i, warning_type in enumerate(WARNING_TYPES):
        stored = severity[:, i]
        is_open = stored >= 0
        if warning_type != "churn_risk":
            active, grade = rules[warning_type](is_open)
        elif probability is not None:
            enter, leave = churn_bounds
            active = probability >= np.where(is_open, leave, enter)
            grade = _churn_grades(probability, columns["revenue_52w"], thresholds)
        else:
            continue
        worse = is_open & active & (grade > stored)
        change |= (active != is_open) | worse
        if warning_type == "churn_risk":
            speaks = (~is_open & active) | worse
    return change, speaks
