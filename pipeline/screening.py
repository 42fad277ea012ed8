"""Which customers a sweep must look at closely (pure, vectorised over a block).

:func:`changing` judges every rule of :data:`pipeline.rules.RULES` for all
customers of a block at once and says where an episode opens, resolves or
gets worse. A sweep then builds records (:func:`pipeline.episodes.evaluate`
with those customers' rows of the judgement) only there; everyone else's
would be nothing. A test runs both ways over whole histories (every customer
evaluated on its own, and the screened sweep) and demands the same records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.events import WARNING_TYPES, WarningType
from churnwatch.pipeline.features import FeatureColumns
from churnwatch.pipeline.rules import Judged, Row, Scores, judge_all

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Screen:
    """A block's judgement: who changes, whose churn-risk episode speaks (opens or
    gets worse, so its reasons are needed), and every rule's judgement."""

    change: BoolArray
    speaks: BoolArray
    judged: dict[WarningType, Judged]

    def rows(self, i: int) -> dict[WarningType, Row]:
        """The ``i``-th customer's row of every rule's judgement."""
        return {kind: judged.row(i) for kind, judged in self.judged.items()}


def changing(
    columns: FeatureColumns,
    thresholds: WarningThresholds,
    severity: npt.NDArray[np.int8],
    scores: Scores | None,
) -> Screen:
    """Judge a block: ``thresholds`` are the customers' segment's; ``severity`` is each
    open episode's severity index per :data:`WARNING_TYPES` (-1: none open);
    ``scores`` the model's (None: rules only)."""
    judged = judge_all(columns, thresholds, severity, scores)
    change = np.zeros(len(severity), bool)
    speaks = np.zeros(len(severity), bool)
    for kind, judgement in judged.items():
        stored = severity[:, WARNING_TYPES.index(kind)]
        is_open = stored >= 0
        worse = is_open & judgement.active & (judgement.grade > stored)
        change |= (judgement.active != is_open) | worse
        if kind == "churn_risk":
            speaks = (~is_open & judgement.active) | worse
    return Screen(change, speaks, judged)
