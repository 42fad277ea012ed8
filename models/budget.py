"""Figures at an alert budget: what a rep who can act on ``K`` customers a week
finds, if the week's calls follow the warnings' ranking or a simpler one.

At each cutoff of the backtest's rows (every ``model.cutoff_every_days``), each
rep's book (its owner's customers; where the data names no owner, books of
``model.customers_per_rep`` customers) gets the calls of the weeks since the
last cutoff, ``K`` a week. The candidates are the book's customers not yet
flagged by the plain rule (an order within the horizon). Each strategy picks
that many of them:

- **warnings**: the customers with a warning open then, highest expected loss
  first (52-week order value x the walk-forward model's probability where one
  served, the value alone otherwise): the inbox's order;
- **longest silence**: the most days since the last order;
- **rhythm**: the longest silence against the customer's own pace (days since
  the last order over its mean days between orders; one-order customers at
  the book's median pace): the rhythm-only ranking;
- **revenue drop**: the biggest fall of the last 13 weeks' order value below a
  quarter of its 52-week value, in money.

A pick *finds* a churn when it comes between the customer's last order and
:data:`~models.outcomes.EARLY_DAYS` before the plain rule would flag it; each
churn is found once. A strategy's figures: the churns it found and their lost
revenue (52-week order value at the last order), as shares of every churn whose
early window a cutoff fell in, overall and for the top 20% of customers by value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.models.outcomes import EARLY_DAYS, Churn, OrderValues
from churnwatch.pipeline.state import DAY

STRATEGIES = ("warnings", "longest_silence", "rhythm", "revenue_drop")


def books(customers: list[str], owners: dict[str, str], per_rep: int) -> dict[str, str]:
    """Each customer's book: its owner, else one of the ``per_rep``-customer books the
    unowned customers are dealt into (in id order)."""
    unowned = sorted(c for c in customers if not owners.get(c))
    out = {c: owners[c] for c in customers if owners.get(c)}
    for i, c in enumerate(unowned):
        out[c] = f"book {i // per_rep + 1}"
    return out


def budget_figures(
    frames: list[pd.DataFrame],
    open_at: Callable[[str, float], bool],
    model_probability: Callable[[pd.DataFrame, float], np.ndarray | None],
    owners: dict[str, str],
    churns: list[Churn],
    values: OrderValues,
    horizon_days: float,
    calls_per_week: int,
    customers_per_rep: int,
    data_end: float,
) -> dict[str, Any] | None:
    """The strategies' figures at this budget (module docstring); None without rows.
    ``open_at(customer, t)``: a warning of the customer is open at ``t``;
    ``model_probability(rows, t)``: the served model's probabilities (None: none)."""
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    moments = pd.to_datetime(data["cutoff"], utc=True)
    data["at"] = (moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    data = data[data["at"] + horizon_days * DAY <= data_end]  # (its churns are known)
    data = data[data["days_since_last_order"] <= horizon_days]
    if data.empty:
        return None
    book_of = books(sorted(set(data["customer_id"])), owners, customers_per_rep)
    data["book"] = data["customer_id"].map(book_of)
    cutoffs = sorted(set(data["at"]))
    gap = (cutoffs[1] - cutoffs[0]) if len(cutoffs) > 1 else 7 * DAY
    calls = max(1, round(calls_per_week * gap / (7 * DAY)))
    # each churn's early window: from its last order to EARLY_DAYS before its flag
    windows: dict[str, list[Churn]] = defaultdict(list)
    for churn in churns:
        windows[churn.customer_id].append(churn)

    def found_by(customer: str, t: float) -> Churn | None:
        for churn in windows.get(customer, ()):
            if churn.last_order <= t <= churn.flagged_at - EARLY_DAYS * DAY:
                return churn
        return None

    pace = _pace(data)
    found: dict[str, set[Churn]] = {s: set() for s in STRATEGIES}
    reachable: set[Churn] = set()
    for at in cutoffs:
        rows = data[data["at"] == at]
        probability = model_probability(rows, at)
        value = rows["revenue_52w"].to_numpy(dtype=float)
        scores = {
            "warnings": np.where(
                [open_at(c, at) for c in rows["customer_id"]],
                value * (probability if probability is not None else 1.0),
                -np.inf,
            ),
            "longest_silence": rows["days_since_last_order"].to_numpy(dtype=float),
            "rhythm": rows["days_since_last_order"].to_numpy(dtype=float)
            / pace.loc[rows.index].to_numpy(),
            "revenue_drop": value / 4 - rows["amount_13w"].to_numpy(dtype=float),
        }
        customers = rows["customer_id"].to_numpy()
        for c in customers:
            window = found_by(c, at)
            if window is not None:
                reachable.add(window)
        for _, positions in rows.groupby("book").indices.items():
            for strategy, score in scores.items():
                mine = score[positions]
                order = np.lexsort((customers[positions], -mine))[:calls]
                for i in order:
                    if np.isfinite(mine[i]):
                        hit = found_by(customers[positions][i], at)
                        if hit is not None:
                            found[strategy].add(hit)

    def shares(churn_set: set[Churn], keep: Callable[[str], bool]) -> dict[str, Any]:
        pool = [c for c in reachable if keep(c.customer_id)]
        mine = [c for c in churn_set if keep(c.customer_id)]
        lost = sum(values.at(c.customer_id, c.last_order) for c in pool)
        got = sum(values.at(c.customer_id, c.last_order) for c in mine)
        return {
            "churns_found": len(mine),
            "of_churns": round(len(mine) / len(pool), 3) if pool else None,
            "lost_revenue_found": round(got, 2),
            "of_lost_revenue": round(got / lost, 3) if lost > 0 else None,
        }

    return {
        "calls_per_rep_week": calls_per_week,
        "calls_per_cutoff": calls,
        "books": len(set(book_of.values())),
        "cutoffs": len(cutoffs),
        "churns_reachable": len(reachable),
        "strategies": {
            s: {
                **shares(found[s], lambda _c: True),
                "top_20": shares(found[s], lambda c: c in values.top),
            }
            for s in STRATEGIES
        },
    }


def _pace(data: pd.DataFrame) -> pd.Series:
    """Each row's mean days between orders (the book's median where it has one order)."""
    repeats = data["rfm_repeat_orders"].to_numpy(dtype=float)
    span = data["rfm_last_order_age_days"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(repeats > 0, span / repeats, np.nan)
    median = float(np.nanmedian(own)) if np.isfinite(own).any() else 30.0
    return pd.Series(np.where(np.isfinite(own) & (own > 0), own, median), index=data.index)
