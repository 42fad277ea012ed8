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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from churnwatch.core.registry import CARD_FILE, MODEL_FILE, RegistryError, promoted_version
from pipeline.features import QUADRANTS, FeatureColumns, Features
from pipeline.kernels import LARGEST, tree_sums
from pipeline.texts import FEATURE_LABELS, Language, text

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float64]

#: Feature fields that are not model inputs: the moment itself, and a label
#: that enters one-hot encoded (``quadrant_<name>``).
NOT_INPUTS = ("as_of", "quadrant")
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


class Classifier(Protocol):
    def predict_proba(self, x: Matrix) -> Matrix: ...


def _calibration(calibrator: Any) -> Callable[[Matrix], Matrix]:
    """The calibrator's ``predict``; for isotonic regression, the interpolation it
    ends in, without the input checks that cost more than it on a few hundred rows."""
    interpolate = getattr(calibrator, "f_", None)
    if (
        type(calibrator).__name__ != "IsotonicRegression"
        or interpolate is None
        or calibrator.out_of_bounds != "clip"
        or calibrator.X_thresholds_.dtype != np.float64
    ):
        return cast(Callable[[Matrix], Matrix], calibrator.predict)
    low, high = calibrator.X_min_, calibrator.X_max_

    def calibrate(raw: Matrix) -> Matrix:
        return np.asarray(interpolate(np.clip(raw, low, high)), dtype=np.float64)

    return calibrate


class CompiledBoosters:
    """The calibrated boosters of a churnwatch model, scored with a few numpy operations.

    scikit-learn walks each of the 3 x 60 trees in its own call, which costs
    far more than the arithmetic for a partition's few hundred customers in
    every sweep. Here one compiled loop (:func:`pipeline.kernels.tree_sums`)
    walks every tree for every row and adds the leaf values in scikit-learn's
    order, so the probabilities are the same numbers. :meth:`compile` checks that on
    probe rows and gives None when it cannot promise it (another model shape,
    another scikit-learn): the model then scores through scikit-learn.
    """

    def __init__(self, boosters: list[tuple[Any, Any]]) -> None:
        # Every tree of every booster in one node array. A node's children sit
        # at 2 * node (left) and 2 * node + 1 (right) of ``children``; a leaf is
        # its own child (so a walk may also go as deep as the deepest tree).
        nodes = [tree.nodes for booster, _ in boosters for (tree,) in booster._predictors]  # noqa: SLF001
        sizes = [len(n) for n in nodes]
        offsets = np.cumsum([0, *sizes[:-1]])
        shift = np.repeat(offsets, sizes)
        flat = np.concatenate(nodes)
        leaf = flat["is_leaf"].astype(bool)
        own = np.arange(len(flat))
        left = np.where(leaf, own, flat["left"].astype(np.intp) + shift)
        right = np.where(leaf, own, flat["right"].astype(np.intp) + shift)
        self._roots = offsets.astype(np.intp)
        self._children = np.column_stack([left, right]).ravel()
        self._width = int(boosters[0][0].n_features_in_)
        # Each row is scored as two copies side by side, missing values read as
        # -inf in the first and +inf in the second, every other value within the
        # finite range; a node whose missing values go right reads the second
        # copy, so ``value > threshold`` sends a missing value its way without a
        # test for it. A split of the present values from the missing ones has
        # the threshold +inf in scikit-learn (every value goes left): here the
        # largest finite number, which a present value never exceeds.
        missing_right = ~leaf & ~flat["missing_go_to_left"].astype(bool)
        feature = np.where(leaf, 0, flat["feature_idx"]).astype(np.intp)
        self._feature = feature + np.where(missing_right, self._width, 0)
        threshold = np.where(leaf, 0.0, flat["num_threshold"]).astype(np.float64)
        self._threshold = np.where(threshold == np.inf, LARGEST, threshold)
        if not np.isfinite(self._threshold).all():
            raise ValueError("a split on a threshold of -inf or NaN")
        self._value = flat["value"].astype(np.float64)
        self._depth = int(flat["depth"].max())
        # Booster b's trees are firsts[b] to ends[b]; its raw score starts at its
        # baseline (a 1 x 1 array for a binary booster).
        counts = [len(booster._predictors) for booster, _ in boosters]  # noqa: SLF001
        self._ends = np.cumsum(counts).astype(np.intp)
        self._firsts = (self._ends - np.array(counts)).astype(np.intp)
        self._baselines = np.array(
            [float(np.ravel(booster._baseline_prediction)[0]) for booster, _ in boosters]  # noqa: SLF001
        )
        self._calibrate = [_calibration(calibrator) for _, calibrator in boosters]

    @classmethod
    def compile(cls, estimator: Any, probes: Matrix) -> CompiledBoosters | None:
        """For a CalibratedClassifierCV of binary HistGradientBoosting boosters, or None."""
        try:
            parts = []
            for calibrated in estimator.calibrated_classifiers_:
                booster = calibrated.estimator
                if type(booster).__name__ != "HistGradientBoostingClassifier":
                    return None
                if calibrated.method not in ("isotonic", "sigmoid"):
                    return None
                if len(calibrated.calibrators) != 1 or len(booster.classes_) != 2:
                    return None
                if getattr(booster, "is_categorical_", None) is not None:
                    return None
                trees = booster._predictors  # noqa: SLF001
                if any(tree.nodes["is_categorical"].any() for (tree,) in trees):
                    return None
                parts.append((booster, calibrated.calibrators[0]))
            compiled = cls(parts)
            expected = estimator.predict_proba(probes)[:, 1]
            if not np.array_equal(compiled.probabilities(probes), expected):
                return None
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            return None
        return compiled

    def split_thresholds(self) -> list[Matrix]:
        """Each input's distinct split thresholds over all trees, sorted: between two
        of them the input does not change any tree's path."""
        nodes = np.arange(len(self._feature))
        split = self._children[2 * nodes] != nodes  # (a leaf is its own child)
        inputs = self._feature % self._width
        return [np.unique(self._threshold[split & (inputs == j)]) for j in range(self._width)]

    def probabilities(self, rows: Matrix) -> Matrix:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        n, width = rows.shape
        if width != self._width:
            raise ValueError(f"rows have {width} inputs; the model takes {self._width}")
        raws = tree_sums(
            rows,
            self._feature,
            self._threshold,
            self._children,
            self._depth,
            self._value,
            self._roots,
            self._firsts,
            self._ends,
            self._baselines,
        )
        mean = np.zeros(n)
        for b, calibrate in enumerate(self._calibrate):
            raw = raws[:, b]
            calibrated = np.asarray(calibrate(raw), dtype=np.float64)
            calibrated[(1.0 < calibrated) & (calibrated <= 1.0 + 1e-5)] = 1.0  # as sklearn
            mean += calibrated
        mean /= len(self._calibrate)
        return mean


class ModelError(Exception):
    """A model folder that cannot serve: the message says why."""


#: Inputs whose drift the worker reports (``churnwatch_feature_drift_psi``).
DRIFT_FEATURES = (
    "days_since_last_order",
    "orders_13w",
    "amount_13w",
    "revenue_52w",
    "silence_vs_usual_gap",
    "overdue_amount",
    "complaints_13w",
    "inbound_recent",
)
_PSI_FLOOR = 1e-4


def drift_reference(values: Matrix) -> dict[str, list[float]]:
    """Decile edges of one input over the training rows and each bin's share (last: missing)."""
    known = values[~np.isnan(values)]
    edges = sorted(set(np.quantile(known, np.linspace(0.1, 0.9, 9)).tolist())) if len(known) else []
    return {"edges": edges, "shares": _shares(values, edges).tolist()}


def _shares(values: Matrix, edges: list[float]) -> Matrix:
    missing = np.isnan(values)
    bins = np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, float(missing.sum()))
    return counts / max(1.0, float(len(values)))


def psi(reference: dict[str, list[float]], values: Matrix) -> float:
    """Population stability index of ``values`` against a :func:`drift_reference`."""
    expected = np.maximum(np.asarray(reference["shares"], dtype=float), _PSI_FLOOR)
    actual = np.maximum(_shares(values, reference["edges"]), _PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class ChurnModel:
    """A loaded model: probabilities for many customers at once, and their reasons."""

    version: str
    estimator: Classifier
    #: Typical value of each input over the training rows (the reasons' "usual").
    usual: Matrix
    horizon_days: float
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
        """The inputs that pushed this row's score up the most, strongest first.

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
            found = []
            for j in np.argsort(-row_raises, kind="stable")[:top]:
                if row_raises[j] <= 0.005:
                    break
                name = INPUT_FEATURES[j]
                found.append(
                    (labels[name], float(row[j]), float(self.usual[j]), float(row_raises[j]))
                )
            out.append(found)
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


def _epoch(iso: object) -> float:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def probe_rows(usual: Matrix, count: int = 512) -> Matrix:
    """Rows around the usual inputs (scaled, zero, negative, missing): what a
    compiled model must score exactly as scikit-learn before it serves."""
    rng = np.random.default_rng(0)
    base = np.where(np.isnan(usual), 1.0, usual)
    scale = np.abs(base) + 1.0
    rows = (
        base
        + scale
        * rng.standard_normal((count, len(usual)))
        * rng.choice([0.1, 1, 10], count)[:, None]
    )
    rows[rng.random(rows.shape) < 0.1] = np.nan
    rows[rng.random(rows.shape) < 0.05] = 0.0
    return np.vstack([usual, rows])


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
