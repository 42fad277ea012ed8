"""The warning rules (pure: no I/O, no Faust).

Each rule reads :class:`~pipeline.features.Features` and thresholds and says
whether the customer is in the warning condition (with the *exit* threshold
when an episode is open, the *enter* one otherwise), how severe, and with
``explain`` the evidence and the recommended action. :mod:`pipeline.episodes`
turns the verdicts into episodes and records; :mod:`pipeline.screening` is the
same conditions over a whole block at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from churnwatch.core.thresholds import (
    ChurnRiskThresholds,
    ComplaintTroubleThresholds,
    CoolingEngagementThresholds,
    OverdueDebtThresholds,
    SalesDropThresholds,
    WarningThresholds,
)
from churnwatch.pipeline.events import Severity, WarningType
from churnwatch.pipeline.features import Features
from churnwatch.pipeline.state import SEVERITIES
from churnwatch.pipeline.texts import text


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


def silence_chance(
    days_silent: Any,
    orders_total: Any,
    usual_gap_days: Any,
    regularity: Any,
    t: SalesDropThresholds,
) -> tuple[Any, Any]:
    """How often a pause of ``days_silent`` would come at the customer's own pace,
    and that pace (days per order); floats or arrays of one value per customer.

    The customer's orders are taken to arrive at a steady rate that is not known
    exactly: before its own orders the rate is the prior's (one every
    ``prior_gap_days``, as sure as ``prior_gaps`` gaps of its own), and each gap
    it shows moves the estimate towards its usual gap (a gamma prior on a
    Poisson rate). The chance of no order for ``d`` days is then
    ``(scale / (scale + d)) ** shape``: after many regular orders close to
    ``exp(-d / gap)``, after one or two much less sure, so a customer with a
    thin history is judged by the prior and warned only after a long pause.
    """
    gaps = np.where(usual_gap_days > 0, np.maximum(orders_total - 1, 0), 0)
    # Gaps more uneven than a steady rate's (coefficient of variation above 1)
    # say less about the rate: they count for less (a bursty customer's long
    # pause is less surprising).
    gaps = gaps / np.maximum(1.0, np.nan_to_num(regularity, nan=1.0) ** 2)
    shape = t.prior_gaps + gaps
    scale = t.prior_gaps * t.prior_gap_days + gaps * usual_gap_days
    return np.exp(-shape * np.log1p(days_silent / scale)), scale / shape


def sales_drop(
    f: Features,
    t: SalesDropThresholds,
    all_t: WarningThresholds,
    is_open: bool,
    explain: bool = False,
) -> Verdict:
    """Orders below the customer's own baseline, or a silence unlikely at its own pace."""
    expected_orders = f.orders_baseline_per_week * all_t.recent_weeks
    expected_amount = f.amount_baseline_per_week * all_t.recent_weeks
    baseline_known = f.history_weeks >= all_t.recent_weeks + all_t.baseline_weeks
    comparable = baseline_known and expected_orders >= t.min_expected_orders
    ratio = f.amount_recent / expected_amount if comparable and expected_amount > 0 else None

    chance = pace = None
    if f.days_since_last_order is not None:
        chance, pace = silence_chance(
            f.days_since_last_order,
            f.orders_total,
            f.mean_order_gap_days,
            np.nan if f.order_regularity is None else f.order_regularity,
            t,
        )

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
    silence_limit = max(t.min_silence_days, t.longest_gap_margin * f.longest_gap_past_year_days)
    if is_open:
        dropped = ratio is not None and ratio < t.exit_ratio
        silent = chance is not None and chance <= t.exit_silence_chance
    else:
        dropped = ratio is not None and ratio <= t.enter_ratio
        silent = (
            chance is not None
            and chance <= t.enter_silence_chance
            and (f.days_since_last_order or 0) >= silence_limit
        )
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
    if chance is not None and pace is not None and f.days_since_last_order is not None:
        evidence["days_since_last_order"] = round(f.days_since_last_order, 1)
        evidence["usual_gap_days"] = round(float(pace), 1)
        evidence["chance_of_such_a_pause_pct"] = round(float(chance) * 100, 2)
        evidence["longest_gap_past_year_days"] = round(f.longest_gap_past_year_days, 1)
    if f.amount_same_weeks_last_year is not None:
        evidence["amount_same_weeks_last_year"] = round(f.amount_same_weeks_last_year, 2)

    weeks = all_t.recent_weeks
    if silent and chance is not None and not dropped:
        # With no more gaps of its own than the prior is worth, the pace is
        # mostly the book's (or segment's): say so.
        thin = f.orders_total - 1 <= t.prior_gaps
        summary = text(
            all_t.language,
            "sales_drop.silence_thin" if thin else "sales_drop.silence",
            days=f.days_since_last_order or 0,
            gap=pace,
            odds=1 / max(float(chance), 1e-9),
            longest=f.longest_gap_past_year_days,
            orders=f.orders_total,
            prior=t.prior_gap_days,
        )
        base = 2 if chance <= t.enter_silence_chance / 10 else 1
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
    #: The probabilities the warning opens at and resolves below (for this model's
    #: book: :meth:`ChurnRiskThresholds.bounds`).
    enter: float
    exit: float


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
    active = p >= (risk.exit if is_open else risk.enter)
    if active == is_open and not explain:
        return NO_CHANGE[active]
    language = all_t.language
    evidence = {
        "churn_probability": round(p, 3),
        "enter_probability": round(risk.enter, 3),
        "exit_probability": round(risk.exit, 3),
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
        severity=churn_severity(p, f.revenue_52w, all_t),
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


def churn_severity(p: float, revenue_52w: float, thresholds: WarningThresholds) -> Severity:
    """The churn-risk warning's severity at probability ``p``."""
    return _grade(2 if p >= 0.9 else 1 if p >= 0.8 else 0, revenue_52w, thresholds)


#: The rule-based warning types, in evaluation order.
RULES: tuple[WarningType, ...] = (
    "sales_drop",
    "overdue_debt",
    "cooling_engagement",
    "complaint_trouble",
)
