"""The features read from customers' states (pure: no I/O, no Faust).

``read_many`` reads the features of many customers at once as of a point in
(event) time, with a handful of vectorised operations and compiled loops
(:mod:`pipeline.kernels`); ``read_features`` is that same read for one
customer. The Faust agent and every batch job call the same functions, so
streaming and batch cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from itertools import chain, compress
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from churnwatch.pipeline.kernels import window_max, window_sums
from churnwatch.pipeline.state import (
    DAY,
    PAST_YEAR_WEEKS,
    RING_WEEKS,
    SEASON_MARGIN_WEEKS,
    SHORT_RING_WEEKS,
    WEEK,
    CustomerState,
    StateBlock,
    to_epoch,
    week_of,
)

QUADRANTS = {
    (True, True): "protect",
    (True, False): "at_risk",
    (False, True): "grow",
    (False, False): "let_go",
}


@dataclass(slots=True)
class Features:
    """What the rules read, as of one moment; names are the business's words.

    Read-only by convention, not frozen: one is built per customer a sweep
    looks at closely, and a frozen dataclass of this size is slow to build.
    """

    as_of: float
    history_weeks: float
    # orders
    orders_recent: float
    amount_recent: float
    orders_baseline_per_week: float
    amount_baseline_per_week: float
    amount_same_weeks_last_year: float | None
    orders_4w: float
    orders_13w: float
    orders_52w: float  # the customer's order rhythm (not a model input: pipeline.scoring)
    amount_13w: float
    orders_total: int
    days_since_last_order: float | None
    mean_order_gap_days: float
    silence_vs_usual_gap: float | None
    longest_gap_past_year_days: float
    amount_trend: float | None  # recent weekly revenue vs baseline, -1..+inf
    # payments
    open_balance: float
    overdue_amount: float
    overdue_1_30: float
    overdue_31_60: float
    overdue_61_90: float
    overdue_over_90: float
    max_days_past_due: float
    overdue_invoices: int
    share_paid_late: float | None
    days_late_recent: float
    days_late_usual: float
    payment_delays_growing: bool
    open_disputes: int
    credit_used: float | None
    # complaints
    complaints_4w: float
    complaints_13w: float
    complaints_usual_4w: float  # the customer's own rate before the last 4 weeks
    open_complaints: int
    oldest_open_complaint_days: float
    max_open_severity: int
    returns_13w: float
    returns_share_13w: float | None
    # engagement
    inbound_recent: float
    inbound_baseline_per_week: float
    days_since_last_inbound: float | None
    days_since_last_contact: float | None
    outbound_recent: float
    inbound_share_recent: float | None
    # value and loyalty
    revenue_52w: float
    tenure_days: float
    order_regularity: float | None  # coefficient of variation of the gap; lower is steadier
    quadrant: str


FEATURE_NAMES = tuple(f.name for f in fields(Features))
#: Features that may be unknown (None); NaN in a :class:`FeatureColumns`.
OPTIONAL_FEATURES = frozenset(f.name for f in fields(Features) if "None" in str(f.type))
_INTEGER_FEATURES = frozenset(
    ("orders_total", "overdue_invoices", "open_disputes", "open_complaints", "max_open_severity")
)

#: Features of many customers: name -> one value per customer (NaN for unknown).
FeatureColumns = dict[str, Any]


class _Weeks:
    """Which slots of a ring hold which of the weeks ending with ``now_week``."""

    def __init__(self, head: npt.NDArray[Any], now_week: int, size: int) -> None:
        weeks = np.arange(now_week - size + 1, now_week + 1)
        self.slots = weeks % size
        self.held = (weeks[None, :] <= head[:, None]) & (weeks[None, :] > head[:, None] - size)

    def layout(self, ring: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Each customer's ring laid out as the weeks ending with ``now_week``, oldest
        first; weeks the ring does not hold (yet, or any more) read as zero."""
        return np.where(self.held, ring[:, self.slots], 0)


def weekly_history(
    state: CustomerState, as_of: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The weeks the state holds, ending with ``as_of``'s week, oldest first: week
    numbers (:func:`week_of`), orders and revenue in each (zero where none)."""
    now_week = week_of(as_of)
    weeks = _Weeks(np.array([state.week_head]), now_week, RING_WEEKS)
    return (
        np.arange(now_week - RING_WEEKS + 1, now_week + 1),
        weeks.layout(state.order_counts[None, :])[0].astype(np.int64),
        weeks.layout(state.order_amounts[None, :])[0].astype(np.float64),
    )


def _when(condition: Any, value: Any) -> Any:
    """``value`` where ``condition`` holds, NaN (unknown) elsewhere."""
    return np.where(condition, value, np.nan)


def read_many(
    block: StateBlock,
    rows: npt.NDArray[np.intp],
    as_of: float,
    recent_weeks: int = 8,
    baseline_weeks: int = 26,
    high_value_revenue: float = 50_000.0,
) -> FeatureColumns:
    """Features of the customers at ``rows`` of ``block`` as of ``as_of`` (event time).

    One array per :class:`Features` field; unknown values are NaN. This is the
    one definition of every feature: :func:`read_features` is this for one row.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _read_many(
            block, rows, float(as_of), recent_weeks, baseline_weeks, high_value_revenue
        )


def _read_many(
    block: StateBlock,
    rows: npt.NDArray[np.intp],
    now: float,
    recent_weeks: int,
    baseline_weeks: int,
    high_value_revenue: float,
) -> FeatureColumns:
    now_week = week_of(now)
    col = block.col
    n = len(rows)
    last = RING_WEEKS
    short = SHORT_RING_WEEKS
    first_seen = col["first_seen_at"][rows]
    seen = first_seen != 0
    history_weeks = np.where(seen, (now - first_seen) / WEEK, 0.0)

    # Every window of every ring, laid out as the weeks ending with now_week
    # (positions 0 .. size - 1, oldest first), summed in one compiled pass.
    r0, b0 = last - recent_weeks, last - recent_weeks - baseline_weeks
    # Last year's level around the same weeks (a week either side, scaled to
    # the recent window) smooths out the odd early or late order.
    ly_weeks = recent_weeks + 2 * SEASON_MARGIN_WEEKS
    ly_end = last - 52 + SEASON_MARGIN_WEEKS
    head = col["week_head"]

    def sums(ring: str, *windows: tuple[int, int]) -> list[npt.NDArray[np.float64]]:
        starts = np.array([a for a, _ in windows], np.intp)
        ends = np.array([b for _, b in windows], np.intp)
        out = window_sums(col[ring], head, rows, now_week, starts, ends)
        return list(out.T)

    orders_recent, orders_baseline, orders_4w, orders_13w, orders_52w = sums(
        "order_counts",
        (r0, last),
        (b0, r0),
        (last - 4, last),
        (last - 13, last),
        (last - 52, last),
    )
    amount_recent, amount_baseline_total, amount_ly, amount_13w, revenue_52w = sums(
        "order_amounts",
        (r0, last),
        (b0, r0),
        (ly_end - ly_weeks, ly_end),
        (last - 13, last),
        (last - 52, last),
    )
    inbound_recent, inbound_baseline = sums("inbound_contacts", (r0, last), (b0, r0))
    complaints_4w, complaints_13w = sums(
        "complaint_counts", (short - 4, short), (short - 13, short)
    )
    (returns_13w,) = sums("return_amounts", (short - 13, short))
    (outbound_recent,) = sums("outbound_contacts", (short - recent_weeks, short))
    amount_baseline = amount_baseline_total / baseline_weeks

    ly_first_week = now_week - 52 + SEASON_MARGIN_WEEKS - ly_weeks + 1
    last_year_covered = seen & ((first_seen // WEEK) <= ly_first_week)
    same_weeks_last_year = _when(last_year_covered, amount_ly * recent_weeks / ly_weeks)

    last_order = col["last_order_at"][rows]
    days_since_last_order = _when(last_order != 0, (now - last_order) / DAY)
    gap = col["mean_order_gap_days"][rows]
    orders_total = col["orders_total"][rows]
    regularity = _when((gap > 0) & (orders_total >= 4), np.sqrt(col["order_gap_var"][rows]) / gap)
    tenure_days = np.where(seen, (now - first_seen) / DAY, 0.0)
    loyal = (tenure_days >= 365) & (regularity <= 1.0)
    settled = col["invoices_settled"][rows]
    last_inbound = col["last_inbound_at"][rows]
    last_contact = col["last_contact_at"][rows]
    days_late_recent = col["days_late_recent"][rows]
    days_late_usual = col["days_late_usual"][rows]
    interactions = inbound_recent + outbound_recent

    payments = _payment_features(block, rows, now)
    open_balance = payments["open_balance"]
    credit_limit = col["credit_limit"][rows]
    high_value = revenue_52w >= high_value_revenue
    quadrant = np.array([QUADRANTS[(True, True)]] * n, dtype=object)
    quadrant[high_value & ~loyal] = QUADRANTS[(True, False)]
    quadrant[~high_value & loyal] = QUADRANTS[(False, True)]
    quadrant[~high_value & ~loyal] = QUADRANTS[(False, False)]
    columns: FeatureColumns = {
        "as_of": np.full(n, now),
        "history_weeks": history_weeks,
        "orders_recent": orders_recent,
        "amount_recent": amount_recent,
        "orders_baseline_per_week": orders_baseline / baseline_weeks,
        "amount_baseline_per_week": amount_baseline,
        "amount_same_weeks_last_year": same_weeks_last_year,
        "orders_4w": orders_4w,
        "orders_13w": orders_13w,
        "orders_52w": orders_52w,
        "amount_13w": amount_13w,
        "orders_total": orders_total.astype(np.int64),
        "days_since_last_order": days_since_last_order,
        "mean_order_gap_days": gap,
        "silence_vs_usual_gap": _when(gap > 0, days_since_last_order / gap),
        "longest_gap_past_year_days": window_max(
            col["longest_gaps"], head, rows, now_week, last - PAST_YEAR_WEEKS
        ),
        "amount_trend": _when(
            amount_baseline > 0, amount_recent / (amount_baseline * recent_weeks) - 1
        ),
        **payments,
        "share_paid_late": _when(settled > 0, col["invoices_paid_late"][rows] / settled),
        "days_late_recent": days_late_recent,
        "days_late_usual": days_late_usual,
        "payment_delays_growing": (settled >= 4) & (days_late_recent > days_late_usual + 5),
        "credit_used": _when(credit_limit > 0, open_balance / credit_limit),
        "complaints_4w": complaints_4w,
        "complaints_13w": complaints_13w,
        "complaints_usual_4w": (
            4 * (col["complaints_total"][rows] - complaints_4w) / np.maximum(history_weeks - 4, 4)
        ),
        "returns_13w": returns_13w,
        "returns_share_13w": _when(amount_13w > 0, returns_13w / amount_13w),
        "inbound_recent": inbound_recent,
        "inbound_baseline_per_week": inbound_baseline / baseline_weeks,
        "days_since_last_inbound": _when(last_inbound != 0, (now - last_inbound) / DAY),
        "days_since_last_contact": _when(last_contact != 0, (now - last_contact) / DAY),
        "outbound_recent": outbound_recent,
        "inbound_share_recent": _when(interactions > 0, inbound_recent / interactions),
        "revenue_52w": revenue_52w,
        "tenure_days": tenure_days,
        "order_regularity": regularity,
        "quadrant": quadrant,
    }
    return columns


def _payment_features(
    block: StateBlock, rows: npt.NDArray[np.intp], now: float
) -> dict[str, npt.NDArray[Any]]:
    """Aging of the open invoices, and the open complaints, of the customers at ``rows``.

    Every open invoice (complaint) of the block in one flat array, aggregated
    per customer with ``bincount``, which adds in list order as a loop would.
    """
    n = len(rows)
    position = np.full(block.size, -1, np.int64)
    position[rows] = np.arange(n)
    out: dict[str, npt.NDArray[Any]] = {}

    owners, invoices = _flat(block.invoices, position)
    amounts = _column(invoices, 1)
    due = _column(invoices, 2)
    overdue = due < now
    days_past_due = np.where(overdue, (now - due) / DAY, 0.0)
    bucket = np.select(
        [days_past_due <= 30, days_past_due <= 60, days_past_due <= 90], [0, 1, 2], 3
    )
    out["open_balance"] = np.bincount(owners, weights=amounts, minlength=n)
    aged = [
        np.bincount(owners, weights=np.where(overdue & (bucket == k), amounts, 0.0), minlength=n)
        for k in range(4)
    ]
    out["overdue_1_30"], out["overdue_31_60"], out["overdue_61_90"], out["overdue_over_90"] = aged
    out["overdue_amount"] = aged[0] + aged[1] + aged[2] + aged[3]
    max_dpd = np.zeros(n)
    np.maximum.at(max_dpd, owners, days_past_due)
    out["max_days_past_due"] = max_dpd
    out["overdue_invoices"] = np.bincount(owners, weights=overdue, minlength=n).astype(np.int64)

    owners, complaints = _flat(block.complaints, position)
    opened = _column(complaints, 1)
    severity = _column(complaints, 2).astype(np.int64)
    billing = np.array([complaint[3:4] == ["billing"] for complaint in complaints], dtype=bool)
    count = np.bincount(owners, minlength=n)
    oldest = np.full(n, np.inf)
    np.minimum.at(oldest, owners, opened)
    out["open_complaints"] = count.astype(np.int64)
    out["oldest_open_complaint_days"] = np.where(
        (count > 0) & (oldest != 0), (now - oldest) / DAY, 0.0
    )
    highest = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(highest, owners, severity)
    out["max_open_severity"] = np.where(count > 0, highest, 0)
    out["open_disputes"] = np.bincount(owners, weights=billing, minlength=n).astype(np.int64)
    return out


def _flat(
    table: dict[int, list[list[Any]]], position: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], list[list[Any]]]:
    """The entries of the customers ``position`` picks, each customer's in list
    order (the order a loop over them would add in), and each one's position."""
    count = len(table)
    where = position[np.fromiter(table, dtype=np.int64, count=count)]
    lengths = np.fromiter(map(len, table.values()), dtype=np.int64, count=count)
    picked = where >= 0
    entries = list(chain.from_iterable(compress(table.values(), picked.tolist())))
    return np.repeat(where[picked], lengths[picked]), entries


def _column(entries: list[list[Any]], index: int) -> npt.NDArray[np.float64]:
    """One field of every entry, as numbers."""
    return np.fromiter(map(itemgetter(index), entries), dtype=np.float64, count=len(entries))


def features_of(columns: FeatureColumns, i: int) -> Features:
    """The :class:`Features` of the ``i``-th customer of ``columns``."""
    values: dict[str, Any] = {}
    for name in FEATURE_NAMES:
        value = columns[name][i]
        if name in OPTIONAL_FEATURES:
            value = float(value)
            values[name] = None if math.isnan(value) else value
        elif name in _INTEGER_FEATURES:
            values[name] = int(value)
        elif name == "payment_delays_growing":
            values[name] = bool(value)
        elif name == "quadrant":
            values[name] = str(value)
        else:
            values[name] = float(value)
    return Features(**values)


def read_features(
    state: CustomerState,
    as_of: datetime | float,
    recent_weeks: int = 8,
    baseline_weeks: int = 26,
    high_value_revenue: float = 50_000.0,
) -> Features:
    """Features of one customer as of ``as_of`` (event time): :func:`read_many` for one row."""
    now = as_of if isinstance(as_of, float | int) else to_epoch(as_of)
    columns = read_many(
        state.block,
        np.array([state.row]),
        float(now),
        recent_weeks,
        baseline_weeks,
        high_value_revenue,
    )
    return features_of(columns, 0)
