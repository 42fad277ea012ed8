"""The warning rules (pure: no I/O, no Faust), each defined once.

A :class:`Rule` has two parts. ``judge`` reads the feature columns of a block
of customers (one array per feature, :func:`pipeline.features.read_many`) and
says for all of them at once whether the warning condition holds (with the
*exit* threshold where an episode is open, the *enter* one elsewhere) and how
severe, keeping the figures it computed on the way. ``explain`` turns one
customer's row of that judgement into what a salesperson reads: the summary,
the evidence in numbers and the recommended action. A sweep judges a whole
block; :func:`pipeline.episodes.evaluate` judges a block of one.

:data:`RULES` registers every rule once, in evaluation order: the sweep's
screening (:mod:`pipeline.screening`), the episodes, the texts' test and
``churnwatch tune`` (each rule's ``ladder``) read it. A new warning type is
one :class:`Rule` here, its thresholds in :mod:`churnwatch.core.thresholds`
and its texts in :mod:`pipeline.texts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from churnwatch.core.thresholds import SalesDropThresholds, WarningThresholds
from churnwatch.pipeline.events import WARNING_TYPES, Severity, WarningType
from churnwatch.pipeline.features import FeatureColumns, Features
from churnwatch.pipeline.state import SEVERITIES
from churnwatch.pipeline.texts import text

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
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


@dataclass(frozen=True, slots=True)
class Scores:
    """The churn model's probabilities for a block, and the (enter, exit) bounds
    (one for all, or each customer's own)."""

    probability: FloatArray
    enter: float | FloatArray
    exit: float | FloatArray


@dataclass(frozen=True, slots=True)
class Judged:
    """A rule's judgement of a block: per customer, whether the condition holds, its
    severity index (:data:`SEVERITIES`) and the figures ``explain`` reads."""

    active: BoolArray
    grade: IntArray
    figures: Mapping[str, npt.NDArray[Any]]

    def row(self, i: int) -> Row:
        return Row(
            bool(self.active[i]),
            SEVERITIES[int(self.grade[i])],
            {name: values[i].item() for name, values in self.figures.items()},
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One customer's judgement: ``figures`` are plain numbers (NaN: unknown)."""

    active: bool
    severity: Severity
    figures: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Explanation:
    summary: str
    evidence: dict[str, float]
    action: str


Judge = Callable[[FeatureColumns, WarningThresholds, BoolArray, Scores | None], Judged]
Explain = Callable[[Features, Row, WarningThresholds, Risk | None], Explanation]


@dataclass(frozen=True)
class Rule:
    """One warning type: its judgement, its explanation, its tune ladder."""

    warning_type: WarningType
    judge: Judge
    explain: Explain
    #: Threshold sets of this type for ``churnwatch tune``, strictest first; the third
    #: is configs/default.yaml's. Each loosens or tightens every entry condition of
    #: the type together (and its exit with it, so an episode still closes below
    #: where it opened).
    ladder: tuple[dict[str, float], ...]
    #: The keys of :mod:`pipeline.texts` it speaks with (both languages have them).
    texts: tuple[str, ...]
    #: Judged only where a model scores the customers.
    needs_model: bool = False


def _grades(base: Any, revenue_52w: FloatArray, t: WarningThresholds) -> IntArray:
    """Severity indexes: ``base``, one up for a high-value customer, within the scale."""
    graded: IntArray = np.clip(base + (revenue_52w >= t.high_value_revenue), 0, len(SEVERITIES) - 1)
    return graded.astype(np.int64)


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


# -- sales drop ----------------------------------------------------------------


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


def _judge_sales_drop(
    c: FeatureColumns, all_t: WarningThresholds, is_open: BoolArray, _: Scores | None
) -> Judged:
    """Orders below the customer's own baseline, or a silence unlikely at its own pace."""
    t = all_t.sales_drop
    rw = all_t.recent_weeks
    expected_orders = c["orders_baseline_per_week"] * rw
    expected_amount = c["amount_baseline_per_week"] * rw
    baseline_known = c["history_weeks"] >= rw + all_t.baseline_weeks
    comparable = baseline_known & (expected_orders >= t.min_expected_orders)
    ratio = np.where(
        comparable & (expected_amount > 0), c["amount_recent"] / expected_amount, np.nan
    )
    since = c["days_since_last_order"]
    chance, pace = silence_chance(
        since, c["orders_total"], c["mean_order_gap_days"], c["order_regularity"], t
    )
    # A quiet season is not a drop: when the same weeks last year are known and
    # either this year holds up against them, or last year was just as far
    # below the usual level, the customer is following its own season.
    last_year = c["amount_same_weeks_last_year"]
    seasonal = ~np.isnan(last_year) & (
        (c["amount_recent"] >= t.seasonal_tolerance * last_year)
        | (last_year <= t.enter_ratio * expected_amount)
    )
    # Silence counts once it is longer than any pause of the past year too
    # (a customer that always pauses in winter is not silent in winter).
    silence_limit = np.maximum(
        t.min_silence_days, t.longest_gap_margin * c["longest_gap_past_year_days"]
    )
    dropped = np.where(is_open, ratio < t.exit_ratio, ratio <= t.enter_ratio)
    silent = np.where(
        is_open,
        chance <= t.exit_silence_chance,
        (chance <= t.enter_silence_chance) & (np.nan_to_num(since) >= silence_limit),
    )
    silence_path = silent & ~dropped
    base = np.where(
        silence_path,
        1 + (chance <= t.enter_silence_chance / 10),
        1 + (ratio <= t.enter_ratio / 2),
    )
    return Judged(
        (dropped | silent) & ~seasonal,
        _grades(base, c["revenue_52w"], all_t),
        {
            "expected_orders": expected_orders,
            "expected_amount": expected_amount,
            "ratio": ratio,
            "chance": chance,
            "pace": pace,
            "silence_path": silence_path,
        },
    )


def _explain_sales_drop(
    f: Features, row: Row, all_t: WarningThresholds, _: Risk | None
) -> Explanation:
    t, fig = all_t.sales_drop, row.figures
    ratio, chance = _known(fig["ratio"]), _known(fig["chance"])
    evidence: dict[str, float] = {
        "orders_recent": f.orders_recent,
        "orders_expected": round(fig["expected_orders"], 1),
        "amount_recent": round(f.amount_recent, 2),
        "amount_expected": round(fig["expected_amount"], 2),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    if ratio is not None:
        evidence["amount_change_pct"] = round((ratio - 1) * 100, 1)
    if chance is not None and f.days_since_last_order is not None:
        evidence["days_since_last_order"] = round(f.days_since_last_order, 1)
        evidence["usual_gap_days"] = round(fig["pace"], 1)
        evidence["chance_of_such_a_pause_pct"] = round(chance * 100, 2)
        evidence["longest_gap_past_year_days"] = round(f.longest_gap_past_year_days, 1)
    if f.amount_same_weeks_last_year is not None:
        evidence["amount_same_weeks_last_year"] = round(f.amount_same_weeks_last_year, 2)
    if fig["silence_path"] and chance is not None:
        # With no more gaps of its own than the prior is worth, the pace is
        # mostly the book's (or segment's): say so.
        thin = f.orders_total - 1 <= t.prior_gaps
        summary = text(
            all_t.language,
            "sales_drop.silence_thin" if thin else "sales_drop.silence",
            days=f.days_since_last_order or 0,
            gap=fig["pace"],
            odds=1 / max(chance, 1e-9),
            longest=f.longest_gap_past_year_days,
            orders=f.orders_total,
            prior=t.prior_gap_days,
        )
    else:
        summary = text(
            all_t.language,
            "sales_drop.drop",
            orders=f.orders_recent,
            amount=f.amount_recent,
            weeks=all_t.recent_weeks,
            expected_orders=fig["expected_orders"],
            expected_amount=fig["expected_amount"],
            change=f"{(ratio - 1) * 100:+.0f}%" if ratio is not None else "n/a",
        )
    return Explanation(summary, evidence, text(all_t.language, "sales_drop.action"))


# -- overdue debt --------------------------------------------------------------


def _judge_overdue_debt(
    c: FeatureColumns, all_t: WarningThresholds, is_open: BoolArray, _: Scores | None
) -> Judged:
    """Unpaid invoices past due, by amount and age."""
    t = all_t.overdue_debt
    dpd, amount = c["max_days_past_due"], c["overdue_amount"]
    active = np.where(
        is_open,
        (dpd > t.exit_days_past_due) & (amount > 0),
        (dpd >= t.enter_days_past_due) & (amount >= t.min_overdue_amount),
    )
    base = np.where(dpd > 90, 3, np.where(dpd > 60, 2, 1))
    return Judged(active, _grades(base, c["revenue_52w"], all_t), {})


def _explain_overdue_debt(
    f: Features, row: Row, all_t: WarningThresholds, _: Risk | None
) -> Explanation:
    summary = text(
        all_t.language,
        "overdue_debt.summary",
        amount=f.overdue_amount,
        invoices=f.overdue_invoices,
        days=f.max_days_past_due,
        balance=f.open_balance,
    )
    evidence: dict[str, float] = {
        "overdue_amount": round(f.overdue_amount, 2),
        "overdue_invoices": f.overdue_invoices,
        "max_days_past_due": round(f.max_days_past_due, 1),
        "open_balance": round(f.open_balance, 2),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    return Explanation(summary, evidence, text(all_t.language, "overdue_debt.action"))


# -- cooling engagement --------------------------------------------------------


def _judge_cooling_engagement(
    c: FeatureColumns, all_t: WarningThresholds, is_open: BoolArray, _: Scores | None
) -> Judged:
    """The customer reaches out (calls, replies, logs in) far less than it used to."""
    t = all_t.cooling_engagement
    rw = all_t.recent_weeks
    expected = c["inbound_baseline_per_week"] * rw
    baseline_known = c["history_weeks"] >= rw + all_t.baseline_weeks
    comparable = baseline_known & (expected >= t.min_expected_contacts)
    ratio = np.where(comparable, c["inbound_recent"] / expected, np.nan)
    silence = c["days_since_last_inbound"]
    silence_known = ~np.isnan(silence) & (c["history_weeks"] >= all_t.baseline_weeks)
    # Silence is judged against the customer's own rhythm: a customer who calls
    # monthly is not cold after 45 quiet days, one who calls weekly may be.
    usual_gap = np.where(expected > 0, 7 * rw / expected, 0.0)
    quiet = np.nan_to_num(silence)
    cooled = np.where(is_open, ratio < t.exit_ratio, ratio <= t.enter_ratio)
    silent = silence_known & np.where(
        is_open,
        quiet >= np.maximum(t.exit_silence_days, t.exit_silence_gaps * usual_gap),
        quiet >= np.maximum(t.enter_silence_days, t.enter_silence_gaps * usual_gap),
    )
    base = np.where(np.nan_to_num(ratio) > t.enter_ratio / 2, 1, 2)
    return Judged(
        cooled | silent,
        _grades(base, c["revenue_52w"], all_t),
        {"expected": expected, "ratio": ratio, "usual_gap": usual_gap},
    )


def _explain_cooling_engagement(
    f: Features, row: Row, all_t: WarningThresholds, _: Risk | None
) -> Explanation:
    fig = row.figures
    ratio, silence = _known(fig["ratio"]), f.days_since_last_inbound
    evidence: dict[str, float] = {
        "inbound_recent": f.inbound_recent,
        "inbound_expected": round(fig["expected"], 1),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    if ratio is not None:
        evidence["inbound_change_pct"] = round((ratio - 1) * 100, 1)
    if silence is not None:
        evidence["days_since_last_inbound"] = round(silence, 1)
        evidence["usual_inbound_gap_days"] = round(fig["usual_gap"], 1)
    summary = text(
        all_t.language,
        "cooling_engagement.summary",
        recent=f.inbound_recent,
        weeks=all_t.recent_weeks,
        expected=fig["expected"],
        days=silence or 0,
    )
    return Explanation(summary, evidence, text(all_t.language, "cooling_engagement.action"))


# -- complaint trouble ---------------------------------------------------------


def _judge_complaint_trouble(
    c: FeatureColumns, all_t: WarningThresholds, is_open: BoolArray, _: Scores | None
) -> Judged:
    """A surge of complaints, a complaint left unresolved too long, or heavy returns."""
    t = all_t.complaint_trouble
    share = np.nan_to_num(c["returns_share_13w"])
    c4w, oldest = c["complaints_4w"], c["oldest_open_complaint_days"]
    surge = np.where(
        is_open,
        c4w > t.exit_complaints_4w,
        c4w >= np.maximum(t.enter_complaints_4w, t.surge_factor * c["complaints_usual_4w"]),
    )
    stale = np.where(is_open, oldest > t.exit_unresolved_days, oldest >= t.enter_unresolved_days)
    returns = np.where(is_open, share > t.exit_returns_share, share >= t.enter_returns_share) & (
        c["returns_13w"] >= t.min_returns_amount
    )
    reasons = surge.astype(np.int64) + stale + returns
    base = 1 + (c["max_open_severity"] >= 3) + (reasons > 1)
    return Judged(
        reasons > 0,
        _grades(base, c["revenue_52w"], all_t),
        {"surge": surge, "stale": stale, "returns": returns},
    )


def _explain_complaint_trouble(
    f: Features, row: Row, all_t: WarningThresholds, _: Risk | None
) -> Explanation:
    language, fig = all_t.language, row.figures
    share = f.returns_share_13w or 0.0
    reasons = []
    if fig["surge"]:
        reasons.append(
            text(
                language,
                "complaint_trouble.surge",
                count=f.complaints_4w,
                usual=f.complaints_usual_4w,
            )
        )
    if fig["stale"]:
        reasons.append(
            text(
                language,
                "complaint_trouble.stale",
                open=f.open_complaints,
                days=f.oldest_open_complaint_days,
            )
        )
    if fig["returns"]:
        reasons.append(
            text(language, "complaint_trouble.returns", amount=f.returns_13w, share=share)
        )
    summary = text(language, "separator").join(reasons) or text(language, "complaint_trouble.calm")
    evidence: dict[str, float] = {
        "complaints_4w": f.complaints_4w,
        "complaints_13w": f.complaints_13w,
        "complaints_usual_4w": round(f.complaints_usual_4w, 2),
        "open_complaints": f.open_complaints,
        "oldest_open_complaint_days": round(f.oldest_open_complaint_days, 1),
        "max_open_severity": f.max_open_severity,
        "returns_13w": round(f.returns_13w, 2),
        "returns_share_13w": round(share, 3),
        "revenue_52w": round(f.revenue_52w, 2),
    }
    return Explanation(summary, evidence, text(language, "complaint_trouble.action"))


# -- churn risk ----------------------------------------------------------------


def _judge_churn_risk(
    c: FeatureColumns, all_t: WarningThresholds, is_open: BoolArray, scores: Scores | None
) -> Judged:
    """The model's probability past the enter bound (resolves below the exit one),
    graver as it climbs towards certainty (ChurnRiskThresholds.severity_steps)."""
    if scores is None:
        raise ValueError("churn_risk needs the model's scores")
    p = scores.probability
    active = p >= np.where(is_open, scores.exit, scores.enter)
    medium, high = all_t.churn_risk.severity_steps(scores.enter)
    base = np.where(p >= high, 2, np.where(p >= medium, 1, 0))
    # A risk that has passed is told as low, whatever the customer's value.
    return Judged(active, np.where(active, _grades(base, c["revenue_52w"], all_t), 0), {})


def _explain_churn_risk(
    f: Features, row: Row, all_t: WarningThresholds, risk: Risk | None
) -> Explanation:
    if risk is None:
        raise ValueError("churn_risk needs a model score")
    p, language = risk.probability, all_t.language
    evidence = {
        "churn_probability": round(p, 3),
        "enter_probability": round(risk.enter, 3),
        "exit_probability": round(risk.exit, 3),
        "revenue_52w": round(f.revenue_52w, 2),
        "expected_loss": round(p * f.revenue_52w, 2),
    }
    if not row.active:
        return Explanation(text(language, "churn_risk.calm", probability=p), evidence, "")
    summary = text(
        language,
        "churn_risk.summary",
        probability=p,
        horizon=risk.horizon_days,
        version=risk.model_version,
        reasons=risk.explain(),
    )
    return Explanation(summary, evidence, text(language, "churn_risk.action"))


# -- the register --------------------------------------------------------------


def _rungs(keys: tuple[str, ...], *rows: tuple[float, ...]) -> tuple[dict[str, float], ...]:
    return tuple(dict(zip(keys, row, strict=True)) for row in rows)


#: Every warning rule, in evaluation order (that of :data:`WARNING_TYPES`).
RULES: dict[WarningType, Rule] = {
    rule.warning_type: rule
    for rule in (
        Rule(
            "sales_drop",
            _judge_sales_drop,
            _explain_sales_drop,
            _rungs(
                (
                    "enter_ratio",
                    "exit_ratio",
                    "enter_silence_chance",
                    "exit_silence_chance",
                    "min_silence_days",
                    "longest_gap_margin",
                ),
                (0.2, 0.5, 0.01, 0.05, 42, 1.5),
                (0.3, 0.6, 0.02, 0.1, 35, 1.35),
                (0.4, 0.7, 0.05, 0.2, 28, 1.2),
                (0.5, 0.8, 0.1, 0.3, 21, 1.1),
                (0.6, 0.9, 0.2, 0.4, 14, 1.0),
                (0.7, 1.0, 0.3, 0.5, 10, 0.9),
            ),
            (
                "sales_drop.silence",
                "sales_drop.silence_thin",
                "sales_drop.drop",
                "sales_drop.action",
            ),
        ),
        Rule(
            "overdue_debt",
            _judge_overdue_debt,
            _explain_overdue_debt,
            _rungs(
                ("enter_days_past_due", "exit_days_past_due"),
                (60, 20),
                (45, 15),
                (30, 10),
                (21, 7),
                (14, 5),
                (7, 2),
            ),
            ("overdue_debt.summary", "overdue_debt.action"),
        ),
        Rule(
            "cooling_engagement",
            _judge_cooling_engagement,
            _explain_cooling_engagement,
            _rungs(
                (
                    "enter_ratio",
                    "exit_ratio",
                    "enter_silence_days",
                    "exit_silence_days",
                    "enter_silence_gaps",
                    "exit_silence_gaps",
                ),
                (0.1, 0.4, 90, 30, 6.0, 3.0),
                (0.15, 0.45, 75, 25, 5.0, 2.5),
                (0.2, 0.5, 60, 21, 4.0, 2.0),
                (0.3, 0.6, 45, 14, 3.0, 1.5),
                (0.4, 0.7, 30, 10, 2.5, 1.2),
                (0.5, 0.8, 21, 7, 2.0, 1.0),
            ),
            ("cooling_engagement.summary", "cooling_engagement.action"),
        ),
        Rule(
            "complaint_trouble",
            _judge_complaint_trouble,
            _explain_complaint_trouble,
            _rungs(
                (
                    "enter_complaints_4w",
                    "exit_complaints_4w",
                    "surge_factor",
                    "enter_unresolved_days",
                    "exit_unresolved_days",
                    "enter_returns_share",
                    "exit_returns_share",
                ),
                (5, 2, 5.0, 42, 14, 0.8, 0.4),
                (4, 1, 4.0, 28, 10, 0.65, 0.3),
                (3, 1, 3.0, 21, 10, 0.5, 0.25),
                (2, 1, 2.0, 14, 7, 0.4, 0.2),
                (2, 0, 1.5, 10, 5, 0.3, 0.15),
                (1, 0, 1.0, 7, 3, 0.2, 0.1),
            ),
            (
                "complaint_trouble.surge",
                "complaint_trouble.stale",
                "complaint_trouble.returns",
                "complaint_trouble.calm",
                "complaint_trouble.action",
            ),
        ),
        Rule(
            "churn_risk",
            _judge_churn_risk,
            _explain_churn_risk,
            _rungs(
                ("enter_share", "exit_share"),
                *((share, 0.0) for share in (0.3, 0.2, 0.1, 0.05, 0.02, 0.0)),
            ),
            ("churn_risk.summary", "churn_risk.calm", "churn_risk.action"),
            needs_model=True,
        ),
    )
}


def judge_all(
    columns: FeatureColumns,
    thresholds: WarningThresholds,
    severity: npt.NDArray[np.int8],
    scores: Scores | None,
) -> dict[WarningType, Judged]:
    """Every rule's judgement of a block whose open episodes have ``severity`` (one
    column per warning type of :data:`RULES`, -1: none open); the model's rules
    only with ``scores``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            kind: rule.judge(
                columns, thresholds, severity[:, WARNING_TYPES.index(kind)] >= 0, scores
            )
            for kind, rule in RULES.items()
            if scores is not None or not rule.needs_model
        }
