"""Batch training: time-split training set, calibrated model, baselines, registry entry.

The split is by time: the test rows are every active customer at the latest
cutoff whose horizon is fully observed; the training rows come from the
earlier cutoffs whose own horizon ended by then, so no training label looks
into the test period and no customer-period is in both. The model is a
HistGradientBoostingClassifier with isotonic calibration (cross-validated by
customer, so a customer's rows never calibrate its own predictions) and is
compared on the same test rows with the baselines of :mod:`models.baselines`.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.model_selection import GroupKFold

from churnwatch.core.registry import MODEL_FILE, new_version, write_card
from churnwatch.core.settings import Settings
from churnwatch.models.baselines import LABEL, all_baselines
from churnwatch.models.dataset import build_training_set, cutoffs_every
from churnwatch.pipeline.drift import DRIFT_FEATURES, drift_reference
from churnwatch.pipeline.events import CustomerEvent
from churnwatch.pipeline.scoring import INPUT_FEATURES, RHYTHMS, rhythm_groups

Vector = npt.NDArray[np.float64]
TOP_SHARE = 0.10


class TrainingError(Exception):
    """Training cannot run on this data: the message says why."""


@dataclass(frozen=True)
class TrainResult:
    version: str
    folder: Path
    card: dict[str, Any]


def metrics(
    labels: Vector, scores: Vector, probabilities: Vector | None = None
) -> dict[str, float]:
    """ROC-AUC, PR-AUC, precision and lift in the top 10% of ``scores`` (any scale,
    higher is riskier), and the Brier score of ``probabilities`` (default: the scores)."""
    probabilities = scores if probabilities is None else probabilities
    n_top = max(1, math.ceil(TOP_SHARE * len(scores)))
    top = np.argsort(-scores, kind="stable")[:n_top]
    precision = float(labels[top].mean())
    base = float(labels.mean())
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "pr_auc": round(float(average_precision_score(labels, scores)), 4),
        "brier": round(float(brier_score_loss(labels, np.clip(probabilities, 0, 1))), 4),
        "precision_top10": round(precision, 4),
        "lift_top10": round(precision / base, 3) if base else math.nan,
    }


def calibration_table(labels: Vector, scores: Vector, bins: int = 10) -> list[dict[str, float]]:
    """Predicted vs observed churn rate in equal-width probability bins (test rows)."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "from": round(float(edges[b]), 2),
                    "to": round(float(edges[b + 1]), 2),
                    "rows": int(mask.sum()),
                    "predicted": round(float(scores[mask].mean()), 4),
                    "observed": round(float(labels[mask].mean()), 4),
                }
            )
    return table


#: Small, well-regularised trees: a churn history has a few thousand customers
#: per cutoff, and the test period is later than any training row.
BOOSTER: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_iter": 60,
    "max_depth": 3,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.15,
    "n_iter_no_change": 20,
    "random_state": 0,
}


def make_model(groups: Vector, labels: Vector, **changes: Any) -> CalibratedClassifierCV:
    """The churn model, unfitted: :data:`BOOSTER` (with ``changes``) calibrated per fold."""
    booster = HistGradientBoostingClassifier(**(BOOSTER | changes))
    folds = list(GroupKFold(n_splits=3).split(np.zeros(len(labels)), labels, groups))
    # One calibrated booster per fold, averaged: a little bagging, which ranks
    # better than one booster on all rows; 3 x 60 small trees stay cheap to
    # run in every sweep.
    return CalibratedClassifierCV(booster, method="isotonic", cv=folds)


def fit_model(train_rows: pd.DataFrame, weights: Vector | None = None) -> CalibratedClassifierCV:
    """The churn model fitted on training-set rows (:func:`models.dataset.build_training_set`),
    each weighing ``weights`` (default 1)."""
    x_train = train_rows[list(INPUT_FEATURES)].to_numpy(dtype=float, copy=True)
    y_train = train_rows[LABEL].to_numpy(dtype=float)
    # An input this history never has (no payments in an order export) cannot be
    # binned; a constant stands in, the trees never split on it, and the worker
    # may send anything there.
    x_train[:, np.isnan(x_train).all(axis=0)] = 0.0
    model = make_model(train_rows["customer_id"].to_numpy(), y_train)
    model.fit(x_train, y_train, sample_weight=weights)
    return model


@dataclass(frozen=True)
class TeamExamples:
    """What the team's false alarms changed in the training rows."""

    false_alarms: int  # given
    rows: int  # training rows they made "not churning", weighted
    relabelled: int  # of which the history had labelled churned
    weight: float


def teach_false_alarms(
    rows: pd.DataFrame,
    alarms: Sequence[tuple[str, datetime]],
    every_days: int,
    weight: float,
) -> tuple[pd.DataFrame, Vector | None, TeamExamples]:
    """Each false alarm (customer, opened at) as a negative example: the customer's
    row at the last cutoff before the warning opened (within ``every_days``) is
    labelled not churned and weighs ``weight``. Unchanged rows weigh 1; ``weight``
    0 changes nothing (and gives no weights)."""
    if not weight or not alarms or rows.empty:
        return rows, None, TeamExamples(len(alarms), 0, 0, weight)
    by_customer = rows.groupby("customer_id").indices
    cutoffs = pd.to_datetime(rows["cutoff"], utc=True).dt.tz_localize(None).to_numpy()
    window = np.timedelta64(every_days, "D")
    hit: set[int] = set()
    for customer_id, opened in alarms:
        positions = by_customer.get(customer_id)
        if positions is None:
            continue
        at = np.datetime64(opened.astimezone(UTC).replace(tzinfo=None))
        before = [int(p) for p in positions if at - window < cutoffs[p] <= at]
        hit.update(before)
    chosen = np.array(sorted(hit), dtype=int)
    labels = rows[LABEL].to_numpy()
    relabelled = int(labels[chosen].sum()) if len(chosen) else 0
    taught = rows.copy()
    taught.iloc[chosen, taught.columns.get_loc(LABEL)] = 0
    weights = np.ones(len(rows))
    weights[chosen] = weight
    return taught, weights, TeamExamples(len(alarms), len(chosen), relabelled, weight)


#: Fewest training rows of a rhythm for its own churn rate (else the book's serves).
RHYTHM_MIN_ROWS = 30


def rhythm_rates(train_rows: pd.DataFrame) -> list[float | None]:
    """The churn rate of the training rows of each rhythm (``pipeline.scoring.RHYTHMS``,
    by orders in the 52 weeks before the cutoff); None where too few rows."""
    groups = rhythm_groups(train_rows["rfm_orders_52w"].to_numpy(dtype=float))
    labels = train_rows[LABEL].to_numpy(dtype=float)
    out: list[float | None] = []
    for g in range(len(RHYTHMS)):
        mine = labels[groups == g]
        out.append(round(float(mine.mean()), 4) if len(mine) >= RHYTHM_MIN_ROWS else None)
    return out


def usual_values(train_rows: pd.DataFrame) -> pd.Series:
    """Each input's median over the training rows: the "usual" value reasons compare with."""
    return train_rows[list(INPUT_FEATURES)].median(skipna=True)


def split_cutoffs(
    events: list[CustomerEvent], every_days: int, horizon_days: float
) -> tuple[list[datetime], datetime]:
    """Training cutoffs and the test cutoff (see the module docstring)."""
    if not events:
        raise TrainingError("no events to train on")
    cutoffs = cutoffs_every(events, every_days, horizon_days)
    if not cutoffs:
        span = (events[-1].occurred_at - events[0].occurred_at).days
        raise TrainingError(
            f"the history covers {span} days; training needs at least "
            f"{90 + 2 * horizon_days:.0f} (90 days of features, then two label horizons)"
        )
    test = cutoffs[-1]
    train = [c for c in cutoffs if c + timedelta(days=horizon_days) <= test]
    if not train:
        raise TrainingError(
            f"no training cutoff ends its {horizon_days:.0f}-day horizon before the test "
            f"cutoff {test.date()}: the history is too short for a time split"
        )
    return train, test


def train(
    events: list[CustomerEvent],
    settings: Settings,
    registry: Path,
    source: str,
    progress: Callable[[str], None] = lambda _step: None,
    event_progress: Callable[[list[CustomerEvent]], Iterable[CustomerEvent]] = iter,
    false_alarms: Sequence[tuple[str, datetime]] = (),
) -> TrainResult:
    """Train, evaluate and write a new version folder to ``registry`` (not promoted).
    ``false_alarms``: the team's (customer, opened at) churn-risk false alarms, taught
    as negative examples when ``model.false_alarm_weight`` is set (training rows only:
    the test rows keep the history's labels)."""
    horizon = settings.model.horizon_days
    train_cutoffs, test_cutoff = split_cutoffs(events, settings.model.cutoff_every_days, horizon)

    progress("building the point-in-time training set")
    data = build_training_set(
        events, [*train_cutoffs, test_cutoff], horizon, settings.warnings, event_progress
    )
    train_rows, weights, team = teach_false_alarms(
        data[data["cutoff"] < test_cutoff],
        false_alarms,
        settings.model.cutoff_every_days,
        settings.model.false_alarm_weight,
    )
    test_rows = data[data["cutoff"] == test_cutoff]
    for name, rows in (("training", train_rows), ("test", test_rows)):
        if rows[LABEL].nunique() < 2:
            raise TrainingError(f"the {name} rows have only one label: nothing to learn or test")
    y_train = train_rows[LABEL].to_numpy(dtype=float)
    x_test = test_rows[list(INPUT_FEATURES)].to_numpy(dtype=float)
    y_test = test_rows[LABEL].to_numpy(dtype=float)

    progress("fitting the model")
    model = fit_model(train_rows, weights)
    scores = model.predict_proba(x_test)[:, 1]

    progress("scoring the baselines")
    baseline_scores: dict[str, Vector] = {}  # raw: what ranks
    baseline_metrics: dict[str, dict[str, float]] = {}
    for baseline in all_baselines(horizon):
        baseline.fit(train_rows)
        baseline_scores[baseline.name] = baseline.raw(test_rows)
        baseline_metrics[baseline.name] = metrics(
            y_test, baseline_scores[baseline.name], baseline.score(test_rows)
        )

    version = new_version(registry)
    folder = registry / version
    folder.mkdir(parents=True)
    import skops.io as sio

    sio.dump(model, folder / MODEL_FILE)
    usual = usual_values(train_rows)
    card: dict[str, Any] = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "source": source,
        "data_window": {
            "first_event": events[0].occurred_at.isoformat(),
            "last_event": events[-1].occurred_at.isoformat(),
            "train_cutoffs": [train_cutoffs[0].isoformat(), train_cutoffs[-1].isoformat()],
            "train_cutoff_every_days": settings.model.cutoff_every_days,
            "test_cutoff": test_cutoff.isoformat(),
            "train_rows": len(train_rows),
            "test_rows": len(test_rows),
            "train_churn_rate": round(float(y_train.mean()), 4),
            # by rhythm (orders in the past 52 weeks: 1, 2-4, 5-11, 12+), what the
            # churn-risk entry is measured from with churn_risk.relative_to: rhythm
            "churn_rate_by_rhythm": rhythm_rates(train_rows),
            "test_churn_rate": round(float(y_test.mean()), 4),
        },
        "team_false_alarms": {
            "given": team.false_alarms,
            "rows_taught": team.rows,
            "relabelled": team.relabelled,
            "weight": team.weight,
        },
        "features": list(INPUT_FEATURES),
        "usual": {k: (None if math.isnan(v) else round(float(v), 4)) for k, v in usual.items()},
        "label": {
            "definition": f"no order in the {horizon:g} days from the cutoff",
            "horizon_days": horizon,
            "active": "an order in the 365 days before the cutoff",
        },
        "estimator": {
            "type": "3 HistGradientBoostingClassifiers with isotonic calibration, one per "
            "fold (folds grouped by customer), averaged",
            "trees": sum(int(c.estimator.n_iter_) for c in model.calibrated_classifiers_),
            "sklearn": sklearn.__version__,
            "python": platform.python_version(),
        },
        "metrics": {
            "model": metrics(y_test, scores),
            "baselines": baseline_metrics,
        },
        "calibration": calibration_table(y_test, scores),
        "drift": {
            name: drift_reference(train_rows[name].to_numpy(dtype=float)) for name in DRIFT_FEATURES
        },
    }

    progress("writing the report")
    from churnwatch.models.report import write_report

    card["report"] = write_report(folder, card, model, test_rows, scores, baseline_scores)
    write_card(folder, card)
    return TrainResult(version, folder, card)


def beats_baselines(card: dict[str, Any]) -> float:
    """Model ROC-AUC minus the best baseline's."""
    best = max(m["roc_auc"] for m in card["metrics"]["baselines"].values())
    return round(float(card["metrics"]["model"]["roc_auc"]) - float(best), 4)
