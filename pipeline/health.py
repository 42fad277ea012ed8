"""The health score: one number from 0 to 100 per customer (100: nothing to
worry about), with a part per signal family, computed in every sweep from the
sweep's own features (pure: no I/O, no Faust).

The families and what lowers each (``docs/features.md``, "Health score"):

- **buying**: a silence unlikely at the customer's own pace (the sales-drop
  rule's ``silence_chance``: full marks while a pause this long would come at
  least half the time), revenue below its own baseline, and few orders in the
  quarter;
- **paying**: the oldest overdue invoice (nothing at 90 days past due), and
  payment delays that grow;
- **engagement**: contacts the customer starts, against its own baseline;
- **service**: a complaint surge, a complaint left open, returns;
- **risk**: the churn model's probability, from the book's churn rate (full
  marks) to certainty (none).

A family the customer's data says nothing about (no invoice ever, no inbound
contact ever, no model serving) is left out, and the score is the weighted
mean of the others (``warnings.health``, per segment). The commitments family
(plans and renewals) comes with the records that carry them.

The state keeps the score, its parts, the parts a week before and the score of
each of the last 16 weeks (:func:`record_health`), with the model's churn
probability and the time of the sweep that scored it, a few bytes a customer. It
records a new score only once the score moves ``store_step`` points or a new
week begins, the same in the stream and in a batch run, so what a worker
holds is what it stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.features import FeatureColumns
from churnwatch.pipeline.rules import silence_chance
from churnwatch.pipeline.state import HEALTH_WEEKS, WEEK, StateBlock, week_of

FAMILIES = ("buying", "paying", "engagement", "service", "risk")
UNKNOWN = 255
#: The model's churn probability is kept again once it moves this much.
PROBABILITY_STEP = 0.02
#: The health bands, by the lowest score in each (the account feed reports a
#: customer whose stored score crosses one: ``pipeline.events.AccountChange``).
BANDS = (("healthy", 70), ("watch", 40), ("at_risk", 0))

FloatArray = npt.NDArray[np.float64]
Bytes = npt.NDArray[np.uint8]


def _clip01(x: Any) -> FloatArray:
    return np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=1.0), 0.0, 1.0)


def health_of(
    c: FeatureColumns,
    t: WarningThresholds,
    probability: FloatArray | None = None,
    book_churn_rate: float | None = None,
) -> tuple[Bytes, Bytes]:
    """(score, parts) of the customers of ``c``: the score per customer and a
    column per :data:`FAMILIES`, 0-100, :data:`UNKNOWN` where not known.
    ``probability``: the model's, with the churn rate of its book."""
    n = len(c["orders_total"])
    parts = np.full((n, len(FAMILIES)), np.nan)

    ordered = c["orders_total"] > 0
    chance, _ = silence_chance(
        c["days_since_last_order"],
        c["orders_total"],
        c["mean_order_gap_days"],
        c["order_regularity"],
        t.sales_drop,
    )
    pace = _clip01(2 * np.nan_to_num(chance, nan=1.0))
    value = _clip01(1 + c["amount_trend"])  # (unknown trend: no penalty)
    # Few orders in the quarter make a customer fragile, whatever its own pace
    # (frequency ranks churn well on real histories): 1 order 0.53, 4 0.89.
    depth = 1 - np.exp(-(c["orders_13w"] + 0.5) / 2)
    parts[:, 0] = np.where(ordered, pace * (0.5 + 0.5 * value) * depth, np.nan)

    invoiced = ~np.isnan(c["share_paid_late"]) | (c["open_balance"] > 0)
    late = _clip01(1 - np.nan_to_num(c["max_days_past_due"], nan=0.0) / 90)
    growing = np.where(c["payment_delays_growing"], 0.7, 1.0)
    parts[:, 1] = np.where(invoiced, late * growing, np.nan)

    usual = c["inbound_baseline_per_week"] * t.recent_weeks
    parts[:, 2] = np.where(
        usual > 0, _clip01(c["inbound_recent"] / np.where(usual > 0, usual, 1)), np.nan
    )

    surge = _clip01((c["complaints_4w"] - c["complaints_usual_4w"]) / 3)
    stale = _clip01(np.nan_to_num(c["oldest_open_complaint_days"], nan=0.0) / 42)
    returned = _clip01(np.nan_to_num(c["returns_share_13w"], nan=0.0) / 0.5)
    parts[:, 3] = np.where(ordered, 1 - np.maximum(surge, np.maximum(stale, returned)), np.nan)

    if probability is not None:
        rate = min(max(book_churn_rate or 0.0, 0.0), 0.99)
        parts[:, 4] = _clip01(1 - (probability - rate) / (1 - rate))

    w = t.health
    weights = np.array([w.buying, w.paying, w.engagement, w.service, w.risk])
    known = ~np.isnan(parts)
    weight = (known * weights).sum(axis=1)
    mean = np.where(known, parts, 0.0) @ weights / np.where(weight > 0, weight, 1.0)
    score = np.where(weight > 0, np.rint(100 * mean), UNKNOWN).astype(np.uint8)
    return score, np.where(known, np.rint(100 * parts), UNKNOWN).astype(np.uint8)


def record_health(
    block: StateBlock,
    rows: npt.NDArray[np.intp],
    as_of: float,
    score: Bytes,
    parts: Bytes,
    store_step: int,
    probability: FloatArray | None = None,
) -> npt.NDArray[np.intp]:
    """Keep the sweep's health scores in the state of the customers at ``rows``:
    where a new week began (the week before's parts kept, the weeks no sweep
    reached filled with the score that stood) or the score moved at least
    ``store_step`` points (or became known or unknown). The model's
    ``probability`` is kept with it, and also where it moved
    :data:`PROBABILITY_STEP` (the time of the sweep beside it: the customer page
    shows it with that as-of). Returns the rows changed."""
    col = block.col
    week = week_of(as_of)
    stored = col["health_score"][rows].astype(np.int64)
    last = col["health_week"][rows]
    new_week = last < week
    known_changed = (stored == UNKNOWN) != (score == UNKNOWN)
    moved = np.abs(score.astype(np.int64) - stored) >= store_step
    update = new_week | known_changed | moved
    if probability is None:
        probability = np.full(len(rows), np.nan)
    before = col["churn_probability"][rows].astype(np.float64)
    update |= np.isnan(before) != np.isnan(probability)
    update |= np.abs(np.nan_to_num(probability) - np.nan_to_num(before)) >= PROBABILITY_STEP
    at, score, parts, last, new_week, probability = (
        rows[update],
        score[update],
        parts[update],
        last[update],
        new_week[update],
        probability[update],
    )
    col["churn_probability"][at] = probability
    col["churn_scored_at"][at] = np.where(np.isnan(probability), 0.0, as_of)
    ring = col["health_weeks"]
    rolled = at[new_week]
    col["health_parts_before"][rolled] = col["health_parts"][rolled]
    gone = np.minimum(week - np.maximum(last[new_week], week - HEALTH_WEEKS), HEALTH_WEEKS)
    for back in range(1, HEALTH_WEEKS):  # the weeks since the last one recorded
        fill = rolled[gone > back]
        ring[fill, (week - back) % HEALTH_WEEKS] = col["health_score"][fill]
    ring[at, week % HEALTH_WEEKS] = score
    col["health_score"][at] = score
    col["health_parts"][at] = parts
    col["health_week"][at] = week
    changed: npt.NDArray[np.intp] = at
    return changed


def band_codes(scores: Bytes) -> npt.NDArray[np.int8]:
    """Each score's band as its index in :data:`BANDS` (-1: unknown)."""
    s = scores.astype(np.int64)
    codes = np.full(len(s), len(BANDS) - 1, dtype=np.int8)
    for i, (_, lowest) in reversed(list(enumerate(BANDS[:-1]))):
        codes[s >= lowest] = i
    codes[s == UNKNOWN] = -1
    return codes


def band_of(score: int) -> str | None:
    """The band of one score (None: unknown)."""
    code = int(band_codes(np.array([score], dtype=np.uint8))[0])
    return None if code < 0 else BANDS[code][0]


def health_view(block: StateBlock, row: int) -> dict[str, Any] | None:
    """One customer's health as the inbox shows it: the score, its parts (and how
    each moved since the week before), the 7- and 30-day trends and the weekly
    history (oldest first, as (the week's first day, YYYY-MM-DD, score)); None
    before any sweep scored it."""
    col = block.col
    score = int(col["health_score"][row])
    week = int(col["health_week"][row])
    if score == UNKNOWN or week < 0:
        return None
    ring = col["health_weeks"][row]
    history = [
        (datetime.fromtimestamp(w * WEEK, UTC).date().isoformat(), int(ring[w % HEALTH_WEEKS]))
        for w in range(week - HEALTH_WEEKS + 1, week + 1)
        if ring[w % HEALTH_WEEKS] != UNKNOWN
    ]

    def weeks_ago(n: int) -> int | None:
        value = int(ring[(week - n) % HEALTH_WEEKS])
        return None if value == UNKNOWN else score - value

    parts, before = col["health_parts"][row], col["health_parts_before"][row]
    probability = float(col["churn_probability"][row])
    return {
        "score": score,
        # the model's, as of the sweep that kept it (None without a model)
        "churn_probability": None if np.isnan(probability) else probability,
        "scored_at": (
            None
            if np.isnan(probability)
            else datetime.fromtimestamp(float(col["churn_scored_at"][row]), UTC)
        ),
        "parts": {
            family: {
                "score": int(now),
                "moved": None if now == UNKNOWN or then == UNKNOWN else int(now) - int(then),
            }
            for family, now, then in zip(FAMILIES, parts, before, strict=True)
            if now != UNKNOWN
        },
        "trend_7d": weeks_ago(1),
        "trend_30d": weeks_ago(4),
        "history": history,
    }
