"""How warnings score against what the customers did next (pure: no I/O).

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

:func:`honest_score` adds the figures a sales team would judge by (lost-customer
notices apart, steady state, counted from the last order on); docs/features.md
defines each.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from churnwatch.pipeline.scoring import RHYTHM_BOUNDS  # (the worker's rhythms: one source)
from churnwatch.pipeline.state import DAY


@dataclass(frozen=True)
class Churn:
    customer_id: str
    last_order: float
    flagged_at: float  # last_order + horizon: when the plain rule sees it


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


def is_lost(times: list[float], at: float, horizon: float) -> bool:
    """Whether a customer with these order times was already silent past the horizon
    at ``at``: the plain rule has flagged it, so a warning then is a lost-customer
    notice, not an early warning."""
    i = bisect.bisect_right(times, at)
    return bool(i) and at - times[i - 1] > horizon


def score(
    opened: list[tuple[str, float]],
    orders: dict[str, list[float]],
    churns: list[Churn],
    data_end: float,
    horizon: float,
    from_last_order: bool = False,
) -> dict[str, Any]:
    """Precision, recall and lead time of one warning type's openings (customer, time).

    A churn is caught by an opening between ``horizon`` days before its last
    order and its flag, or with ``from_last_order`` only from the last order on
    (an opening before it was followed by that order, so it did not see the
    silence coming: it only happened to be open).
    """
    judged = [(c, t) for c, t in opened if t + horizon <= data_end]
    hits = sum(not _ordered_within(orders.get(c, []), t, horizon) for c, t in judged)
    by_customer: dict[str, list[float]] = defaultdict(list)
    for c, t in opened:
        by_customer[c].append(t)
    leads = []
    for churn in churns:
        start = churn.last_order if from_last_order else churn.last_order - horizon
        times = [
            t for t in by_customer.get(churn.customer_id, []) if start <= t <= churn.flagged_at
        ]
        if times:
            leads.append((churn.flagged_at - min(times)) / DAY)
    return {
        "warned": len({c for c, _ in opened}),
        "episodes": len(opened),
        "judged": len(judged),
        "precision": round(hits / len(judged), 3) if judged else None,
        "recall": round(len(leads) / len(churns), 3) if churns else None,
        "median_lead_days": round(statistics.median(leads), 1) if leads else None,
    }


def honest_score(
    opened: list[tuple[str, float]],
    orders: dict[str, list[float]],
    churns: list[Churn],
    data_end: float,
    horizon: float,
    base: float | None,
    unsteady: frozenset[float] = frozenset(),
    unflagged_base: float | None = None,
    rhythm_rates: dict[int, float] | None = None,
    values: OrderValues | None = None,
) -> dict[str, Any]:
    """:func:`score` as a sales team would judge the warnings: today's figures, then
    ``lost_customer_notices`` (openings about customers already silent past the
    horizon, left out of the rest), and ``early``: the other openings, without
    those at the sweeps in ``unsteady`` (the first sweep of each new model, which
    opens a backlog at once), with recall and lead counted from the last order
    on, and the precision's margin over the ``base`` rate and over the
    ``unflagged_base`` (the churn rate of customers the plain rule has not
    flagged: those an early warning is about) and, with ``rhythm_rates``
    (the second of :func:`base_rates`), over the base rate of customers like the ones
    warned (``like_base_rate``: the same rhythm on the day); with ``values``, the
    early openings' figures by value too (``early.value``: :func:`value_figures`)."""
    gone = [is_lost(orders.get(c, []), t, horizon) for c, t in opened]
    steady = [
        (c, t) for (c, t), lost in zip(opened, gone, strict=True) if not lost and t not in unsteady
    ]
    early = score(steady, orders, churns, data_end, horizon, from_last_order=True)
    precision = early["precision"]
    like = None
    if rhythm_rates is not None:
        judged = [(c, t) for c, t in steady if t + horizon <= data_end]
        like = early["like_base_rate"] = like_base_rate(judged, orders, rhythm_rates)
    if values is not None:
        early["value"] = value_figures(steady, orders, churns, data_end, horizon, values)
    for name, rate in (
        ("precision_over_base", base),
        ("precision_over_unflagged", unflagged_base),
        ("precision_over_like", like),
    ):
        early[name] = (
            round(precision - rate, 3) if precision is not None and rate is not None else None
        )
    return {
        **score(opened, orders, churns, data_end, horizon),
        "lost_customer_notices": sum(gone),
        "early": early,
    }


#: What a figure "by value" weighs each customer-moment by: the customer's order
#: value in the 52 weeks up to then.
VALUE_DAYS = 364
#: The share of customers "by value" figures report apart (the rest beside them).
TOP_SHARE = 0.2
#: How much earlier than the plain rule a warning must open to count as early
#: in the value figures.
EARLY_DAYS = 30


class OrderValues:
    """Each customer's order value in the :data:`VALUE_DAYS` up to any moment, and
    the customers of the top :data:`TOP_SHARE` by their highest such value (their
    best year: a customer that was big and shrank is still a key account lost)."""

    def __init__(self, orders: dict[str, list[tuple[float, float]]]) -> None:
        self.times: dict[str, list[float]] = {}
        self.cumulative: dict[str, list[float]] = {}
        best: dict[str, float] = {}
        for customer, placed in orders.items():
            ordered = sorted(placed)
            times = [t for t, _ in ordered]
            running, sums = 0.0, [0.0]
            for _, amount in ordered:
                running += amount
                sums.append(running)
            self.times[customer], self.cumulative[customer] = times, sums
            best[customer] = max((self.at(customer, t) for t in times), default=0.0)
        ranked = sorted(best, key=lambda c: (-best[c], c))
        self.top: frozenset[str] = frozenset(ranked[: max(1, round(len(ranked) * TOP_SHARE))])
        self.top_threshold = best[ranked[len(self.top) - 1]] if ranked else 0.0

    def at(self, customer: str, t: float) -> float:
        """Order value in the :data:`VALUE_DAYS` days up to ``t`` (inclusive)."""
        times = self.times.get(customer)
        if not times:
            return 0.0
        sums = self.cumulative[customer]
        end = bisect.bisect_right(times, t)
        start = bisect.bisect_right(times, t - VALUE_DAYS * DAY)
        return sums[end] - sums[start]


def value_figures(
    early_openings: list[tuple[str, float]],
    orders: dict[str, list[float]],
    churns: list[Churn],
    data_end: float,
    horizon: float,
    values: OrderValues,
) -> dict[str, Any]:
    """The early openings' figures weighed by value: the share of the lost revenue
    (each churn's 52-week order value at its last order) warned at least
    :data:`EARLY_DAYS` before the plain rule, the precision by value (each judged
    opening weighs the customer's value at it), and both, with the counted
    precision and recall, for the top :data:`TOP_SHARE` of customers by value
    and for the rest."""
    by_customer: dict[str, list[float]] = defaultdict(list)
    for c, t in early_openings:
        by_customer[c].append(t)

    def warned_early(churn: Churn) -> bool:
        latest = churn.flagged_at - EARLY_DAYS * DAY
        return any(churn.last_order <= t <= latest for t in by_customer.get(churn.customer_id, ()))

    def figures(keep: Callable[[str], bool]) -> dict[str, Any]:
        mine = [c for c in churns if keep(c.customer_id)]
        lost = [values.at(c.customer_id, c.last_order) for c in mine]
        early = [warned_early(c) for c in mine]
        judged = [(c, t) for c, t in early_openings if keep(c) and t + horizon <= data_end]
        hit = [not _ordered_within(orders.get(c, []), t, horizon) for c, t in judged]
        weight = [values.at(c, t) for c, t in judged]
        total_weight = sum(weight)
        return {
            "churns": len(mine),
            "lost_revenue": round(sum(lost), 2),
            "lost_revenue_warned_early": (
                round(sum(v for v, e in zip(lost, early, strict=True) if e) / sum(lost), 3)
                if sum(lost) > 0
                else None
            ),
            "recall_early": round(sum(early) / len(mine), 3) if mine else None,
            "judged": len(judged),
            "precision": round(sum(hit) / len(judged), 3) if judged else None,
            "precision_by_value": (
                round(sum(w for w, h in zip(weight, hit, strict=True) if h) / total_weight, 3)
                if total_weight > 0
                else None
            ),
        }

    return {
        **figures(lambda _c: True),
        "top_20": figures(lambda c: c in values.top),
        "rest": figures(lambda c: c not in values.top),
    }


def rhythm(times: list[float], at: float) -> int:
    """Which rhythm a customer with these order times has at ``at``: the index of
    its number of orders in the past year among :data:`RHYTHM_BOUNDS`."""
    count = bisect.bisect_right(times, at) - bisect.bisect_right(times, at - 365 * DAY)
    return bisect.bisect_right(RHYTHM_BOUNDS, count)


def base_rates(
    orders: dict[str, list[float]],
    data_start: float,
    data_end: float,
    horizon: float,
    since: float | None = None,
    active_days: float = 365,
    until: float | None = None,
) -> tuple[float | None, dict[int, float]]:
    """P(no order within the horizon) for an active customer on a random (weekly)
    day, and the same for the customers of each :func:`rhythm` apart, in one pass.

    Active: an order in the past ``active_days`` (with the horizon: customers the
    plain rule has not flagged). Days from a year into the data (when "ordered
    in the past year" means what it says), or from the start if the data is
    too short for that; ``since``: the days from then on instead (the period a
    model served); ``until``: only the days before it.
    """
    hits: dict[int, int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    if since is not None:
        day = since
    elif data_end - data_start > 365 * DAY + horizon:
        day = data_start + 365 * DAY
    else:
        day = data_start + horizon
    while day + horizon <= data_end and (until is None or day < until):
        for times in orders.values():
            i = bisect.bisect_right(times, day)
            if i and day - times[i - 1] <= active_days * DAY:
                group = rhythm(times, day)
                total[group] += 1
                hits[group] += not (i < len(times) and times[i] <= day + horizon)
        day += 7 * DAY
    overall = sum(total.values())
    rate = round(sum(hits.values()) / overall, 3) if overall else None
    return rate, {group: hits[group] / total[group] for group in total}


def base_rate(
    orders: dict[str, list[float]],
    data_start: float,
    data_end: float,
    horizon: float,
    since: float | None = None,
    active_days: float = 365,
    until: float | None = None,
) -> float | None:
    """The whole book's rate of :func:`base_rates`."""
    return base_rates(orders, data_start, data_end, horizon, since, active_days, until)[0]


def like_base_rate(
    opened: list[tuple[str, float]], orders: dict[str, list[float]], rates: dict[int, float]
) -> float | None:
    """The base rate of customers like the ones warned: the mean, over the
    openings, of the rate of the warned customer's rhythm on the day."""
    known = [rates[g] for c, t in opened if (g := rhythm(orders.get(c, []), t)) in rates]
    return round(sum(known) / len(known), 3) if known else None
