"""Warning episodes: open, get worse, resolve (pure: no I/O, no Faust).

:func:`evaluate` applies every rule's judgement of one customer at a sweep
(:data:`pipeline.rules.RULES`: the sweep's block judgement, or a block of
one) to the customer's episodes: a warning opens when the *enter*
threshold is crossed and resolves only past the gentler *exit* threshold (and
not before ``min_episode_days``), so it does not flap; an open episode makes a
new record only when it gets worse. Ids are deterministic (customer, type,
opening time), so a replay or a redelivery produces the same records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.events import WARNING_TYPES, WarningRecord, WarningType
from churnwatch.pipeline.features import Features, features_of, read_many
from churnwatch.pipeline.rules import RULES, Explanation, Risk, Row, Scores, judge_all
from churnwatch.pipeline.state import DAY, SEVERITIES, CustomerState, warning_id


def _columns_for(state: CustomerState, as_of: float, t: WarningThresholds) -> dict[str, Any]:
    return read_many(
        state.block,
        np.array([state.row]),
        float(as_of),
        t.recent_weeks,
        t.baseline_weeks,
        t.high_value_revenue,
    )


def judge_one(
    state: CustomerState, as_of: float, thresholds: WarningThresholds, risk: Risk | None
) -> tuple[Features, dict[WarningType, Row]]:
    """The customer's features and every rule's judgement of it: the sweep's
    judgement of a block of one."""
    t = thresholds.for_segment(state.segment)
    columns = _columns_for(state, as_of, t)
    severity = np.array(
        [
            [
                -1 if (e := state.episode(k)) is None else SEVERITIES.index(e[2])
                for k in WARNING_TYPES
            ]
        ],
        dtype=np.int8,
    )
    scores = None if risk is None else Scores(np.array([risk.probability]), risk.enter, risk.exit)
    judged = judge_all(columns, t, severity, scores)
    return features_of(columns, 0), {kind: j.row(0) for kind, j in judged.items()}


def evaluate(
    state: CustomerState,
    as_of: float,
    thresholds: WarningThresholds,
    risk: Risk | None = None,
    judged: tuple[Features, dict[WarningType, Row]] | None = None,
) -> list[WarningRecord]:
    """Apply every rule's judgement of ``state`` at ``as_of`` to its episodes.

    Returns the warning records to emit (usually none). ``judged`` is the
    customer's features and rows of the sweep's judgement (:func:`judge_one`
    when not given). The customer's segment picks its thresholds; an episode
    stays open for at least ``min_episode_days`` so it cannot flap open and
    shut. With a model ``risk``, the churn-risk episode is judged too and
    every record carries the probability.
    """
    features, rows = judged if judged is not None else judge_one(state, as_of, thresholds, risk)
    thresholds = thresholds.for_segment(state.segment)
    out: list[WarningRecord] = []
    for warning_type, row in rows.items():
        episode = state.episode(warning_type)
        if row.active and episode is None:
            wid = warning_id(state.customer_id, warning_type, as_of)
            state.open_episode(warning_type, as_of, row.severity)
            why = RULES[warning_type].explain(features, row, thresholds, risk)
            out.append(_record(state, warning_type, row, why, "opened", wid, as_of, as_of, risk))
        elif not row.active and episode is not None:
            if as_of - episode[1] < thresholds.min_episode_days * DAY:
                continue
            state.close_episode(warning_type)
            why = RULES[warning_type].explain(features, row, thresholds, risk)
            out.append(
                _record(
                    state, warning_type, row, why, "resolved", episode[0], episode[1], as_of, risk
                )
            )
        elif row.active and episode is not None:
            # Still open: a new record only when it got worse (never for better).
            if SEVERITIES.index(row.severity) > SEVERITIES.index(episode[2]):
                state.regrade_episode(warning_type, row.severity)
                why = RULES[warning_type].explain(features, row, thresholds, risk)
                out.append(
                    _record(
                        state,
                        warning_type,
                        row,
                        why,
                        "escalated",
                        episode[0],
                        episode[1],
                        as_of,
                        risk,
                    )
                )
    return out


def _record(
    state: CustomerState,
    warning_type: WarningType,
    row: Row,
    why: Explanation,
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
        severity=row.severity,
        opened_at=_as_datetime(opened_ts),
        at=_as_datetime(at_ts),
        summary=why.summary,
        evidence=why.evidence,
        recommended_action=why.action,
        churn_probability=None if risk is None else round(risk.probability, 4),
        model_version="" if risk is None else risk.model_version,
    )


def _as_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
