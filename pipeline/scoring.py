"""The churn model as the worker uses it: inputs, safe loading, batch scores, reasons.

The model reads exactly the rules' :class:`~pipeline.features.Features`, as a
vector in the fixed order of :data:`INPUT_FEATURES`, so training (``models/``)
and serving share one definition. A model folder holds ``model.skops`` (the
scikit-learn estimator in skops' format: loading it runs no arbitrary code, and
only the types listed in :data:`TRUSTED_TYPES` are accepted) and ``card.json``
(version, feature list, typical values). :class:`ModelHolder` follows the
registry's promoted version and swaps models while the worker runs; a model
that does not load, or expects other features, is refused and the previous one
keeps serving.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from churnwatch.core.registry import CARD_FILE, MODEL_FILE, RegistryError, promoted_version
from churnwatch.pipeline.boosters import CompiledBoosters, probe_rows
from churnwatch.pipeline.drift import psi
from churnwatch.pipeline.features import QUADRANTS, FeatureColumns, Features
from churnwatch.pipeline.texts import FEATURE_LABELS, Language, text

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float64]

#: Feature fields that are not model inputs: the moment itself, a label that
#: enters one-hot encoded (``quadrant_<name>``), and the orders of the past 52
#: weeks, which place a customer in its rhythm (:func:`rhythm_groups`) for the
#: churn-risk entry (the model has the 13 weeks' and the pace already).
NOT_INPUTS = ("as_of", "quadrant", "orders_52w")
_NUMERIC = tuple(f.name for f in fields(Features) if f.name not in NOT_INPUTS)
_QUADRANTS = tuple(sorted(set(QUADRANTS.values())))
#: The model's inputs, in the order of its feature vector.
INPUT_FEATURES: tuple[str, ...] = _NUMERIC + tuple(f"quadrant_{q}" for q in _QUADRANTS)

#: Types beyond skops' own safe list that a churnwatch model file may contain.
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


def feature_matrix(columns: FeatureColumns) -> Matrix:
    """Many customers' features (:func:`pipeline.features.read_many`) as the
    model's input rows (unknown -> NaN, booleans -> 0/1), in :data:`INPUT_FEATURES` order."""
    quadrant = columns["quadrant"]
    inputs = [np.asarray(columns[name], dtype=float) for name in _NUMERIC]
    inputs.extend((quadrant == q).astype(float) for q in _QUADRANTS)
    return np.column_stack(inputs) if inputs[0].size else np.empty((0, len(INPUT_FEATURES)))


#: The inputs that say how often and how lately the customer orders: its rhythm.
#: A warning's reasons name what beyond these pushed the risk up (payments,
#: complaints, contacts, basket and value trends) when anything did.
RHYTHM_INPUTS = frozenset(
    {
        "history_weeks",
        "orders_recent",
        "orders_baseline_per_week",
        "orders_4w",
        "orders_13w",
        "orders_total",
        "days_since_last_order",
        "mean_order_gap_days",
        "silence_vs_usual_gap",
        "longest_gap_past_year_days",
        "tenure_days",
        "order_regularity",
    }
)

#: Orders in the past 52 weeks from which a customer is of the next rhythm:
#: 1 order (or none), 2-4, 5-11, 12 or more.
RHYTHM_BOUNDS = (2, 5, 12)
#: The rhythms' names, in :func:`rhythm_groups`' order.
RHYTHMS = ("1 order", "2-4 orders", "5-11 orders", "12+ orders")


def rhythm_groups(orders_52w: Matrix) -> npt.NDArray[np.intp]:
    """Each customer's rhythm: the index of its orders in the past 52 weeks among
    :data:`RHYTHM_BOUNDS`."""
    return np.searchsorted(np.array(RHYTHM_BOUNDS), np.asarray(orders_52w), side="right")


class Classifier(Protocol):
    def predict_proba(self, x: Matrix) -> Matrix: ...


class ModelError(Exception):
    """A model folder that cannot serve: the message says why."""


@dataclass(frozen=True)
class ChurnModel:
    """A loaded model: probabilities for many customers at once, and their reasons."""

    version: str
    estimator: Classifier
    #: Typical value of each input over the training rows (the reasons' "usual").
    usual: Matrix
    horizon_days: float
    #: The churn rate of its training rows: the book's rate the warning is relative to.
    book_churn_rate: float | None = None
    #: The same for the training rows of each rhythm (:data:`RHYTHMS`; None: too
    #: few rows of it): what the customer's rhythm alone predicts.
    rhythm_churn_rates: tuple[float | None, ...] | None = None
    #: When the model was trained (UTC epoch seconds, from the card).
    created_at: float = 0.0
    #: Training distribution of the :data:`DRIFT_FEATURES` (from the card).
    drift: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: The same scores without scikit-learn's per-tree calls (None: not available).
    compiled: CompiledBoosters | None = None

    def feature_drift(self, rows: Matrix) -> dict[str, float]:
        """PSI of each drift feature of ``rows`` against the training rows."""
        return {
            name: psi(reference, rows[:, INPUT_FEATURES.index(name)])
            for name, reference in self.drift.items()
            if name in INPUT_FEATURES and len(rows)
        }

    def probabilities(self, rows: Matrix) -> Matrix:
        """P(churn within the horizon) for each row of ``rows`` (one call, any number)."""
        if self.compiled is not None:
            return self.compiled.probabilities(rows)
        return self.estimator.predict_proba(rows)[:, 1]

    def reasons(
        self, row: Matrix, language: Language, top: int = 3
    ) -> list[tuple[str, float, float, float]]:
        """The inputs that pushed this row's score up the most, strongest first:
        those beyond the order rhythm (:data:`RHYTHM_INPUTS`) when any did, the
        rhythm's otherwise (nothing else to say).

        Each input in turn is set to its usual value and the row re-scored;
        the drop in probability is how much that input raised the score.
        Returns ``(label, value, usual, raise)`` for the inputs with a
        positive raise.
        """
        return self.reasons_many(row[np.newaxis, :], [language], top)[0]

    def reasons_many(
        self, rows: Matrix, languages: list[Language], top: int = 3
    ) -> list[list[tuple[str, float, float, float]]]:
        """:meth:`reasons` for every row of ``rows``, all variants scored in one call."""
        count, width = rows.shape
        if not count:
            return []
        variants = np.repeat(rows[:, np.newaxis, :], width + 1, axis=1)
        inputs = np.arange(width)
        variants[:, inputs + 1, inputs] = self.usual
        scores = self.probabilities(variants.reshape(-1, width)).reshape(count, width + 1)
        raises = scores[:, :1] - scores[:, 1:]
        out = []
        for row, row_raises, language in zip(rows, raises, languages, strict=True):
            labels = FEATURE_LABELS[language]
            raised = [j for j in np.argsort(-row_raises, kind="stable") if row_raises[j] > 0.005]
            beyond = [j for j in raised if INPUT_FEATURES[j] not in RHYTHM_INPUTS]
            out.append(
                [
                    (
                        labels[INPUT_FEATURES[j]],
                        float(row[j]),
                        float(self.usual[j]),
                        float(row_raises[j]),
                    )
                    for j in (beyond or raised)[:top]
                ]
            )
        return out

    def explain(self, row: Matrix, language: Language, top: int = 3) -> str:
        """The reasons as one line in ``language``."""
        return self.explain_many(row[np.newaxis, :], [language], top)[0]

    def explain_many(self, rows: Matrix, languages: list[Language], top: int = 3) -> list[str]:
        """:meth:`explain` for every row of ``rows`` (one model call)."""
        return [
            text(language, "separator").join(
                text(
                    language,
                    "churn_risk.reason",
                    label=label,
                    value=_fmt(v, language),
                    usual=_fmt(u, language),
                )
                for label, v, u, _ in reasons
            )
            or "-"
            for reasons, language in zip(
                self.reasons_many(rows, languages, top), languages, strict=True
            )
        ]


def _fmt(value: float, language: Language) -> str:
    if math.isnan(value):
        return text(language, "unknown")
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _rate(value: object) -> float | None:
    try:
        rate = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return rate if 0 <= rate < 1 else None


def _rhythm_rates(value: object) -> tuple[float | None, ...] | None:
    """The card's churn rate by rhythm (a list, one per :data:`RHYTHMS`), if whole."""
    if not isinstance(value, list) or len(value) != len(RHYTHMS):
        return None
    return tuple(_rate(v) for v in value)


def _epoch(iso: object) -> float:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def load_model(folder: Path) -> ChurnModel:
    """Load and check the model in ``folder``; :class:`ModelError` says what is wrong."""
    import skops.io as sio

    try:
        card: dict[str, Any] = json.loads((folder / CARD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / CARD_FILE}: cannot read the model card ({exc})") from None
    expected = list(INPUT_FEATURES)
    if card.get("features") != expected:
        have = card.get("features") or []
        missing = sorted(set(expected) - set(have))
        extra = sorted(set(have) - set(expected))
        raise ModelError(
            f"{folder.name}: trained on other features than this worker computes "
            f"(missing {missing or 'none'}, unknown {extra or 'none'}, or a different order)"
        )
    path = folder / MODEL_FILE
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ModelError(f"{path}: refuses to load types {sorted(untrusted)}")
        estimator = sio.load(path, trusted=TRUSTED_TYPES)
    except ModelError:
        raise
    except Exception as exc:  # a damaged file can fail in many ways
        raise ModelError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from None
    usual = np.array([card.get("usual", {}).get(n, math.nan) for n in expected], dtype=float)
    model = ChurnModel(
        version=str(card.get("version", folder.name)),
        estimator=estimator,
        usual=usual,
        horizon_days=float(card.get("label", {}).get("horizon_days", 90)),
        book_churn_rate=_rate(card.get("data_window", {}).get("train_churn_rate")),
        rhythm_churn_rates=_rhythm_rates(card.get("data_window", {}).get("churn_rate_by_rhythm")),
        drift=dict(card.get("drift", {})),
        created_at=_epoch(card.get("created_at")),
        compiled=CompiledBoosters.compile(estimator, probe_rows(usual)),
    )
    if model.compiled is None:
        log.info("model %s scores through scikit-learn (no compiled form)", model.version)
    try:  # the model must answer for a row like the worker's before it serves
        scores = model.probabilities(usual[np.newaxis, :])
    except Exception as exc:
        raise ModelError(f"{path}: the model cannot score a feature row ({exc})") from None
    if scores.shape != (1,) or not 0.0 <= float(scores[0]) <= 1.0:
        raise ModelError(f"{path}: the model returned {scores!r}, not one probability")
    return model


class ModelHolder:
    """The model the worker serves: follows the registry's promoted version.

    :meth:`refresh` is cheap when nothing changed (it reads one small file), so
    the worker calls it on a timer. A promoted version that cannot serve is
    refused once, with a log line, and the current model keeps serving.
    """

    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.model: ChurnModel | None = None
        self.refused: str | None = None
        self._said_rules_only = False
        self._pointer_error = ""

    def refresh(self) -> ChurnModel | None:
        try:
            version = promoted_version(self.registry)
        except RegistryError as exc:  # a damaged promoted.json: keep what serves
            if str(exc) != self._pointer_error:
                keeping = self.model.version if self.model else "none (rules only)"
                log.error("cannot read the promoted model: %s; still serving %s", exc, keeping)
                self._pointer_error = str(exc)
            return self.model
        self._pointer_error = ""
        if version is None:
            if self.model is None and not self._said_rules_only:
                log.warning(
                    "no churn model promoted in %s: running the warning rules only "
                    "(train one with `churnwatch train`, then `churnwatch models promote`)",
                    self.registry,
                )
                self._said_rules_only = True
            return self.model
        if (self.model is not None and version == self.model.version) or version == self.refused:
            return self.model
        try:
            model = load_model(self.registry / version)
        except ModelError as exc:
            self.refused = version
            keeping = self.model.version if self.model else "none (rules only)"
            log.error("refused churn model %s: %s; still serving %s", version, exc, keeping)
            return self.model
        previous = self.model.version if self.model else "none"
        self.model, self.refused = model, None
        log.info("now serving churn model %s (was %s)", model.version, previous)
        return model
