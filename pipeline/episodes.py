"""Warning episodes: open, get worse, resolve (pure: no I/O, no Faust).

:func:`evaluate` runs every rule of :mod:`pipeline.rules` for one customer at
a sweep and changes the customer's episodes: a warning opens when the *enter*
threshold is crossed and resolves only past the gentler *exit* threshold (and
not before ``min_episode_days``), so it does not flap; an open episode makes a
new record only when it gets worse. Ids are deterministic (customer, type,
opening time), so a replay or a redelivery produces the same records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.events import Severity, WarningRecord, WarningType
from churnwatch.pipeline.features import Features, read_features
from churnwatch.pipeline.rules import (
    RULES,
    Risk,
    Verdict,
    churn_risk,
    churn_severity,
    complaint_trouble,
    cooling_engagement,
    overdue_debt,
    sales_drop,
)
from churnwatch.pipeline.state import DAY, SEVERITIES, CustomerState, warning_id


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
                now = churn_severity(risk.probability, features.revenue_52w, thresholds)
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


def _worse(now: Severity, before: Severity) -> bool:
    return SEVERITIES.index(now) > SEVERITIES.index(before)


def _as_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
