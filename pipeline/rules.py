"""Warning rules and their episodes (pure: no I/O, no Faust).

Each rule reads :class:`~pipeline.features.Features` and thresholds and says
whether the customer is in the warning condition, with the evidence. Episodes
add hysteresis: a warning opens when the *enter* threshold is crossed and
resolves only past the gentler *exit* threshold, so it does not flap. Ids are
deterministic (customer, type, opening time), so a replay or a redelivery
produces the same records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from churnwatch.core.settings import (
    ChurnRiskThresholds,
    ComplaintTroubleThresholds,
    CoolingEngagementThresholds,
    OverdueDebtThresholds,
    SalesDropThresholds,
    WarningThresholds,
)
from pipeline.events import WARNING_TYPES, Severity, WarningRecord, WarningType
from pipeline.features import FeatureColumns, Features, read_features
from pipeline.state import DAY, SEVERITIES, CustomerState, warning_id
from pipeline.texts import text


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's answer: ``active`` given whether an episode is already open."""

    active: bool
    severity: Severity
    summary: str
    evidence: dict[str, float]
    action: str


#: What a rule returns when the episode does not change: nothing to explain.
NO_CHANGE = {
    active: Verdict(active=active, severity="low", summary="", evidence={}, action="")
    for active in (True, False)
}


def _grade(base: int, revenue_52w: float, thresholds: WarningThresholds) -> Severity:
    if revenue_52w >= thresholds.high_value_revenue:
        base += 1
    return SEVERITIES[max(0, min(base, len(SEVERITIES) - 1))]


def sales_drop(
    f: Features,
    t: SalesDropThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """Orders below the customer's own baseline, or silence far beyond its usual gap."""
    expected_orders = f.orders_baseline_per_week * all_t.recent_weeks
    expected_amount = f.amount_baseline_per_week * all_t.recent_weeks
    baseline_known = f.history_weeks >= all_t.recent_weeks + all_t.baseline_weeks
    comparable = baseline_known and expected_orders >= t.min_expected_orders
    ratio = f.amount_recent / expected_amount if comparable and expected_amount > 0 else None

    silence_ratio = None
    if (
        f.days_since_last_order is not None
        and f.mean_order_gap_days > 0
        and f.orders_total >= 4
        and f.history_weeks >= all_t.baseline_weeks
    ):
        silence_ratio = f.days_since_last_order / f.mean_order_gap_days

    # A quiet season is not a drop: when the same weeks last year are known and
    # either this year holds up against them, or last year was just as far
    # below the usual level, the customer is following its own season.
    last_year = f.amount_same_weeks_last_year
    seasonal = last_year is not None and (
        f.amount_recent >= t.seasonal_tolerance * last_year
        or last_year <= t.enter_ratio * expected_amount
    )
    # Silence counts once it is longer than any pause of the past year too
    # (a customer that always pauses in winter is not silent in winter).
    silence_limit = max(
        t.min_silence_days,
        t.enter_silence_ratio * f.mean_order_gap_days,
        t.longest_gap_margin * f.longest_gap_past_year_days,
    )
    if is_open:
        dropped = ratio is not None and ratio < t.exit_ratio
        silent = silence_ratio is not None and silence_ratio >= t.exit_silence_ratio
    else:
        dropped = ratio is not None and ratio <= t.enter_ratio
        silent = silence_ratio is not None and (f.days_since_last_order or 0) >= silence_limit
    active = (dropped or silent) and not seasonal
    if active == is_open and not explain:
        return NO_CHANGE[active]

    evidence: dict[str, float] = {
        "orders_recent": f.orders_recent,
        "orders_expected": round(expected_orders, 1),
        "amount_recent": round(f.amount_recent, 2),
        "amount_expected": round(expected_amount, 2),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    if ratio is not None:
        evidence["amount_change_pct"] = round((ratio - 1) * 100, 1)
    if f.days_since_last_order is not None:
        evidence["days_since_last_order"] = round(f.days_since_last_order, 1)
        evidence["usual_gap_days"] = round(f.mean_order_gap_days, 1)
        evidence["longest_gap_past_year_days"] = round(f.longest_gap_past_year_days, 1)
    if f.amount_same_weeks_last_year is not None:
        evidence["amount_same_weeks_last_year"] = round(f.amount_same_weeks_last_year, 2)

    weeks = all_t.recent_weeks
    if silent and silence_ratio is not None and not dropped:
        summary = text(
            all_t.language,
            "sales_drop.silence",
            days=f.days_since_last_order or 0,
            gap=f.mean_order_gap_days,
            longest=f.longest_gap_past_year_days,
        )
        base = 2 if silence_ratio >= 2 * t.enter_silence_ratio else 1
    else:
        change = f"{(ratio - 1) * 100:+.0f}%" if ratio is not None else "n/a"
        summary = text(
            all_t.language,
            "sales_drop.drop",
            orders=f.orders_recent,
            amount=f.amount_recent,
            weeks=weeks,
            expected_orders=expected_orders,
            expected_amount=expected_amount,
            change=change,
        )
        base = 2 if ratio is not None and ratio <= t.enter_ratio / 2 else 1
    return Verdict(
        active=active,
        severity=_grade(base, f.revenue_52w, all_t),
        summary=summary,
        evidence=evidence,
        action=text(all_t.language, "sales_drop.action"),
    )


def overdue_debt(
    f: Features,
    t: OverdueDebtThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """Unpaid invoices past due, by amount and age."""
    if is_open:
        active = f.max_days_past_due > t.exit_days_past_due and f.overdue_amount > 0
    else:
        active = (
            f.max_days_past_due >= t.enter_days_past_due
            and f.overdue_amount >= t.min_overdue_amount
        )
    if active == is_open and not explain:
        return NO_CHANGE[active]
    base = 3 if f.max_days_past_due > 90 else 2 if f.max_days_past_due > 60 else 1
    return Verdict(
        active=active,
        severity=_grade(base, f.revenue_52w, all_t),
        summary=text(
            all_t.language,
            "overdue_debt.summary",
            amount=f.overdue_amount,
            invoices=f.overdue_invoices,
            days=f.max_days_past_due,
            balance=f.open_balance,
        ),
        evidence={
            "overdue_amount": round(f.overdue_amount, 2),
            "overdue_invoices": f.overdue_invoices,
            "max_days_past_due": round(f.max_days_past_due, 1),
            "open_balance": round(f.open_balance, 2),
            "revenue_52w": round(f.revenue_52w, 2),
        },
        action=text(all_t.language, "overdue_debt.action"),
    )


def cooling_engagement(
    f: Features,
    t: CoolingEngagementThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """The customer reaches out (calls, replies, logs in) far less than it used to."""
    expected = f.inbound_baseline_per_week * all_t.recent_weeks
    baseline_known = f.history_weeks >= all_t.recent_weeks + all_t.baseline_weeks
    comparable = baseline_known and expected >= t.min_expected_contacts
    ratio = f.inbound_recent / expected if comparable else None
    silence = f.days_since_last_inbound
    silence_known = silence is not None and f.history_weeks >= all_t.baseline_weeks
    # Silence is judged against the customer's own rhythm: a customer who calls
    # monthly is not cold after 45 quiet days, one who calls weekly may be.
    usual_gap = 7 * all_t.recent_weeks / expected if expected > 0 else 0.0
    if is_open:
        cooled = ratio is not None and ratio < t.exit_ratio
        silent = silence_known and (silence or 0) >= max(
            t.exit_silence_days, t.exit_silence_gaps * usual_gap
        )
    else:
        cooled = ratio is not None and ratio <= t.enter_ratio
        silent = silence_known and (silence or 0) >= max(
            t.enter_silence_days, t.enter_silence_gaps * usual_gap
        )
    if bool(cooled or silent) == is_open and not explain:
        return NO_CHANGE[is_open]
    evidence: dict[str, float] = {
        "inbound_recent": f.inbound_recent,
        "inbound_expected": round(expected, 1),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    if ratio is not None:
        evidence["inbound_change_pct"] = round((ratio - 1) * 100, 1)
    if silence is not None:
        evidence["days_since_last_inbound"] = round(silence, 1)
        evidence["usual_inbound_gap_days"] = round(usual_gap, 1)
    base = 1 if (ratio or 0) > t.enter_ratio / 2 else 2
    return Verdict(
        active=cooled or silent,
        severity=_grade(base, f.revenue_52w, all_t),
        summary=text(
            all_t.language,
            "cooling_engagement.summary",
            recent=f.inbound_recent,
            weeks=all_t.recent_weeks,
            expected=expected,
            days=silence or 0,
        ),
        evidence=evidence,
        action=text(all_t.language, "cooling_engagement.action"),
    )


def complaint_trouble(
    f: Features,
    t: ComplaintTroubleThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """A surge of complaints, a complaint left unresolved too long, or heavy returns."""
    share = f.returns_share_13w or 0.0
    if is_open:
        surge = f.complaints_4w > t.exit_complaints_4w
        stale = f.oldest_open_complaint_days > t.exit_unresolved_days
        returns = share > t.exit_returns_share and f.returns_13w >= t.min_returns_amount
    else:
        surge = f.complaints_4w >= max(
            t.enter_complaints_4w, t.surge_factor * f.complaints_usual_4w
        )
        stale = f.oldest_open_complaint_days >= t.enter_unresolved_days
        returns = share >= t.enter_returns_share and f.returns_13w >= t.min_returns_amount
    if bool(surge or stale or returns) == is_open and not explain:
        return NO_CHANGE[is_open]
    reasons = []
    if surge:
        reasons.append(
            text(
                all_t.language,
                "complaint_trouble.surge",
                count=f.complaints_4w,
                usual=f.complaints_usual_4w,
            )
        )
    if stale:
        reasons.append(
            text(
                all_t.language,
                "complaint_trouble.stale",
                open=f.open_complaints,
                days=f.oldest_open_complaint_days,
            )
        )
    if returns:
        reasons.append(
            text(all_t.language, "complaint_trouble.returns", amount=f.returns_13w, share=share)
        )
    base = 1 + (f.max_open_severity >= 3) + (len(reasons) > 1)
    return Verdict(
        active=bool(reasons),
        severity=_grade(base, f.revenue_52w, all_t),
        summary=text(all_t.language, "separator").join(reasons)
        or text(all_t.language, "complaint_trouble.calm"),
        evidence={
            "complaints_4w": f.complaints_4w,
            "complaints_13w": f.complaints_13w,
            "complaints_usual_4w": round(f.complaints_usual_4w, 2),
            "open_complaints": f.open_complaints,
            "oldest_open_complaint_days": round(f.oldest_open_complaint_days, 1),
            "max_open_severity": f.max_open_severity,
            "returns_13w": round(f.returns_13w, 2),
            "returns_share_13w": round(share, 3),
            "revenue_52w": round(f.revenue_52w, 2),
        },
        action=text(all_t.language, "complaint_trouble.action"),
    )


@dataclass(slots=True)  # not frozen: one is made per customer per sweep, and frozen is slow
class Risk:
    """The churn model's score for one customer, and how to explain it (lazily)."""

    probability: float
    model_version: str
    horizon_days: float
    explain: Callable[[], str]


def churn_risk(
    f: Features,
    risk: Risk,
    t: ChurnRiskThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """The model's probability past the enter threshold (resolves below the exit one)."""
    p = risk.probability
    active = p >= (t.exit_probability if is_open else t.enter_probability)
    if active == is_open and not explain:
        return NO_CHANGE[active]
    language = all_t.language
    evidence = {
        "churn_probability": round(p, 3),
        "enter_probability": t.enter_probability,
        "exit_probability": t.exit_probability,
        "revenue_52w": round(f.revenue_52w, 2),
        "expected_loss": round(p * f.revenue_52w, 2),
    }
    if not active:
        return Verdict(
            active=False,
            severity="low",
            summary=text(language, "churn_risk.calm", probability=p),
            evidence=evidence,
            action="",
        )
    return Verdict(
        active=True,
        severity=_churn_severity(p, f.revenue_52w, all_t),
        summary=text(
            language,
            "churn_risk.summary",
            probability=p,
            horizon=risk.horizon_days,
            version=risk.model_version,
            reasons=risk.explain(),
        ),
        evidence=evidence,
        action=text(language, "churn_risk.action"),
    )


def _worse(now: Severity, before: Severity) -> bool:
    return SEVERITIES.index(now) > SEVERITIES.index(before)


def _churn_severity(p: float, revenue_52w: float, thresholds: WarningThresholds) -> Severity:
    return _grade(2 if p >= 0.9 else 1 if p >= 0.8 else 0, revenue_52w, thresholds)


def _as_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def features_for(state: CustomerState, as_of: float, thresholds: WarningThresholds) -> Features:
    """The customer's features as its segment's thresholds read them."""
    thresholds = thresholds.for_segment(state.segment)
    return read_features(
        state,
        as_of,
        thresholds.recent_weeks,
        thresholds.baseline_weeks,
        thresholds.high_value_revenue,
    )


def evaluate(
    state: CustomerState,
    as_of: float,
    thresholds: WarningThresholds,
    features: Features | None = None,
    risk: Risk | None = None,
) -> list[WarningRecord]:
    """Re-evaluate every rule for ``state`` at ``as_of``; open/resolve episodes in ``state``.

    Returns the warning records to emit (usually none). The customer's segment
    picks its thresholds; an episode stays open for at least
    ``min_episode_days`` so it cannot flap open and shut. With a model
    ``risk``, the churn-risk episode is evaluated too and every record carries
    the probability.
    """
    if features is None:
        features = features_for(state, as_of, thresholds)
    thresholds = thresholds.for_segment(state.segment)
    types: list[WarningType] = list(RULES)
    if risk is not None:
        types.append("churn_risk")
    out: list[WarningRecord] = []
    for warning_type in types:
        episode = state.episode(warning_type)
        # An open rule episode is re-graded every sweep, so its full verdict is
        # needed anyway; churn risk is graded from the probability alone, and
        # explained only when it opens or gets worse.
        explain = episode is not None and warning_type != "churn_risk"
        verdict = _verdict(warning_type, features, thresholds, risk, episode is not None, explain)
        if verdict.active and episode is None:
            wid = warning_id(state.customer_id, warning_type, as_of)
            state.open_episode(warning_type, as_of, verdict.severity)
            out.append(_record(state, warning_type, verdict, "opened", wid, as_of, as_of, risk))
        elif not verdict.active and episode is not None:
            if as_of - episode[1] < thresholds.min_episode_days * DAY:
                continue
            state.close_episode(warning_type)
            out.append(
                _record(
                    state, warning_type, verdict, "resolved", episode[0], episode[1], as_of, risk
                )
            )
        elif verdict.active and episode is not None:
            # Still open: a new record only when it got worse (never for better).
            now = verdict.severity
            if risk is not None and warning_type == "churn_risk":
                now = _churn_severity(risk.probability, features.revenue_52w, thresholds)
            if _worse(now, episode[2]):
                if not explain:
                    verdict = _verdict(warning_type, features, thresholds, risk, True, True)
                state.regrade_episode(warning_type, verdict.severity)
                out.append(
                    _record(
                        state,
                        warning_type,
                        verdict,
                        "escalated",
                        episode[0],
                        episode[1],
                        as_of,
                        risk,
                    )
                )
    return out


#: The rule-based warning types, in evaluation order.
RULES: tuple[WarningType, ...] = (
    "sales_drop",
    "overdue_debt",
    "cooling_engagement",
    "complaint_trouble",
)


def _verdict(
    warning_type: WarningType,
    f: Features,
    t: WarningThresholds,
    risk: Risk | None,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    if warning_type == "sales_drop":
        return sales_drop(f, t.sales_drop, t, is_open, explain)
    if warning_type == "overdue_debt":
        return overdue_debt(f, t.overdue_debt, t, is_open, explain)
    if warning_type == "cooling_engagement":
        return cooling_engagement(f, t.cooling_engagement, t, is_open, explain)
    if warning_type == "complaint_trouble":
        return complaint_trouble(f, t.complaint_trouble, t, is_open, explain)
    if risk is None:
        raise ValueError("churn_risk needs a model score")
    return churn_risk(f, risk, t.churn_risk, t, is_open, explain)


def _record(
    state: CustomerState,
    warning_type: WarningType,
    verdict: Verdict,
    status: Literal["opened", "resolved", "escalated"],
    wid: str,
    opened_ts: float,
    at_ts: float,
    risk: Risk | None,
) -> WarningRecord:
    return WarningRecord(
        warning_id=wid,
        status=status,
        warning_type=warning_type,
        customer_id=state.customer_id,
        customer_name=state.name,
        owner=state.owner,
        segment=state.segment,
        severity=verdict.severity,
        opened_at=_as_datetime(opened_ts),
        at=_as_datetime(at_ts),
        summary=verdict.summary,
        evidence=verdict.evidence,
        recommended_action=verdict.action,
        churn_probability=None if risk is None else round(risk.probability, 4),
        model_version="" if risk is None else risk.model_version,
    )


# --- which customers a sweep must look at closely ------------------------------------
#
# The functions below decide, for all customers of a block at once, the same
# "is the condition active" and "how severe" as the rules above. A sweep then
# runs :func:`evaluate` only for the customers where an episode opens,
# resolves or gets worse; everyone else's evaluation would return nothing.
# A test runs both ways over whole histories and demands the same records.

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
    since, gap = c["days_since_last_order"], c["mean_order_gap_days"]
    silence_ratio = np.where(
        ~np.isnan(since)
        & (gap > 0)
        & (c["orders_total"] >= 4)
        & (c["history_weeks"] >= all_t.baseline_weeks),
        since / gap,
        np.nan,
    )
    last_year = c["amount_same_weeks_last_year"]
    seasonal = ~np.isnan(last_year) & (
        (c["amount_recent"] >= t.seasonal_tolerance * last_year)
        | (last_year <= t.enter_ratio * expected_amount)
    )
    silence_limit = np.maximum(
        np.maximum(t.min_silence_days, t.enter_silence_ratio * gap),
        t.longest_gap_margin * c["longest_gap_past_year_days"],
    )
    dropped = np.where(is_open, ratio < t.exit_ratio, ratio <= t.enter_ratio)
    silent = np.where(
        is_open,
        silence_ratio >= t.exit_silence_ratio,
        ~np.isnan(silence_ratio) & (np.nan_to_num(since) >= silence_limit),
    )
    active = (dropped | silent) & ~seasonal
    silence_path = silent & ~np.isnan(silence_ratio) & ~dropped
    base = np.where(
        silence_path,
        1 + (silence_ratio >= 2 * t.enter_silence_ratio),
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
    probability: npt.NDArray[np.float64] | None = None,
) -> tuple[BoolArray, BoolArray]:
    """Which customers' episodes change: (any episode opens, resolves or worsens;
    the churn-risk episode opens or worsens, so its reasons are needed).

    ``thresholds`` are the customers' segment's; ``severity`` is each open
    episode's severity index per :data:`WARNING_TYPES` (-1: none open);
    ``probability`` the model's scores (None: rules only).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _changing(columns, thresholds, severity, probability)


def _changing(
    columns: FeatureColumns,
    thresholds: WarningThresholds,
    severity: npt.NDArray[np.int8],
    probability: npt.NDArray[np.float64] | None,
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
            t = thresholds.churn_risk
            active = probability >= np.where(is_open, t.exit_probability, t.enter_probability)
            grade = _churn_grades(probability, columns["revenue_52w"], thresholds)
        else:
            continue
        worse = is_open & active & (grade > stored)
        change |= (active != is_open) | worse
        if warning_type == "churn_risk":
            speaks = (~is_open & active) | worse
    return change, speaks
