"""The calibrated boosters of a churnwatch model, scored without scikit-learn's
per-tree calls (pure: no I/O).

:meth:`CompiledBoosters.compile` builds them from a trained estimator and checks
on :func:`probe_rows` that they give scikit-learn's probabilities, number for
number; :class:`pipeline.scoring.ChurnModel` scores through them when it can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from churnwatch.pipeline.kernels import LARGEST, tree_sums

Matrix = npt.NDArray[np.float64]


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
