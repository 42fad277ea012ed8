"""How far the live population's inputs drift from the training rows: the
population stability index of each input in :data:`DRIFT_FEATURES` (pure).

Training stores each input's decile edges and shares in the model card
(:func:`drift_reference`); the worker reports :func:`psi` of the customers its
sweeps scored against them (``churnwatch_feature_drift_psi``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]


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
