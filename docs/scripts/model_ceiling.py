"""How far above its baselines any churn model gets on an order history.

Builds the training set once with weekly cutoffs (the features the worker
reads, labelled 90 days later), then, for each of three test cutoffs four
weeks apart (the last ones whose label is known), fits on the rows labelled by
then and prints each ranking's ROC-AUC on the test cutoff's customers:

- the baselines of ``churnwatch train`` (recency, frequency, logistic
  regression, BG/NBD), on their raw scores;
- ``model``: today's churn model (``models.train.fit_model``);
- ``model, slower``: the same booster, shallower and slower (depth 2,
  learning rate 0.03, 300 rounds, no early stopping);
- ``model, chosen on an inner time split``: the booster settings of
  :data:`INNER_GRID` that rank the last four training cutoffs best;
- ``model + BG/NBD inputs``: today's booster with BG/NBD's P(alive) and
  P(no order in the horizon) as two more inputs;
- ``rank blend``: the mean rank of the model, the logistic regression and
  BG/NBD;
- ``sales_drop's silence chance``: how unlikely the customer's silence is at
  its own pace (``pipeline.rules.silence_chance``, default settings), as a
  ranking of its own.

Run from the repository (40 s on Online Retail, 2 minutes simulated)::

    python docs/scripts/model_ceiling.py \\
        --events ../shared/data/online_retail/invoices.csv.gz \\
        --mapping configs/mappings/online_retail.yaml
    python docs/scripts/model_ceiling.py --simulated 2000   # a simulated book
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from churnwatch.core.settings import load_settings
from churnwatch.core.thresholds import WarningThresholds
from churnwatch.models.baselines import BGNBD, LABEL, all_baselines, p_alive, p_no_order
from churnwatch.models.dataset import build_training_set, cutoffs_every
from churnwatch.models.train import fit_model, make_model
from churnwatch.pipeline.events import decode_event
from churnwatch.pipeline.rules import silence_chance
from churnwatch.pipeline.scoring import INPUT_FEATURES
from churnwatch.producers.loading import load_exports
from churnwatch.producers.simulator import parse_start, simulate

HORIZON_DAYS = 90
BG_INPUTS = ["bg_p_alive", "bg_p_no_order"]
SILENCE_INPUTS = [
    "days_since_last_order",
    "orders_total",
    "mean_order_gap_days",
    "order_regularity",
]


def _matrix(rows: pd.DataFrame, inputs: list[str], empty: np.ndarray) -> np.ndarray:
    x = rows[inputs].to_numpy(dtype=float, copy=True)
    x[:, empty] = 0.0
    return x


def _booster_fit(train: pd.DataFrame, inputs: list[str], **changes: Any) -> Callable:
    """Today's model (``models.train.make_model``) with ``changes``, fitted on ``inputs``."""
    labels = train[LABEL].to_numpy(dtype=float)
    model = make_model(train["customer_id"].to_numpy(), labels, **changes)
    empty = np.isnan(train[inputs].to_numpy(dtype=float)).all(axis=0)
    model.fit(_matrix(train, inputs, empty), labels)
    return lambda rows: model.predict_proba(_matrix(rows, inputs, empty))[:, 1]


#: The booster settings an inner time split chooses among (the first: today's).
INNER_GRID: list[dict[str, Any]] = [
    {},
    {"max_depth": 2, "learning_rate": 0.05, "max_iter": 150, "early_stopping": False},
    {"max_depth": 4},
    {"max_depth": 5, "min_samples_leaf": 50},
    {"learning_rate": 0.05, "max_iter": 150},
]


def _inner_choice(train: pd.DataFrame) -> Callable:
    """The booster of :data:`INNER_GRID` that ranks the last 4 training cutoffs'
    rows best when fitted on the rows of the cutoffs before them, refitted on
    every training row. One year of history leaves no room for a horizon's gap
    between the two, so their labels overlap in time."""
    inputs = list(INPUT_FEATURES)
    last = sorted(train.cutoff.unique())[-4:]
    validation, inner = train[train.cutoff.isin(last)], train[train.cutoff < min(last)]
    if inner[LABEL].nunique() < 2 or validation[LABEL].nunique() < 2:
        return _booster_fit(train, inputs)  # nothing to choose on: today's
    scores = [
        roc_auc_score(validation[LABEL], _booster_fit(inner, inputs, **g)(validation))
        for g in INNER_GRID
    ]
    return _booster_fit(train, inputs, **INNER_GRID[int(np.argmax(scores))])


def _with_bgnbd(bg: BGNBD, rows: pd.DataFrame) -> pd.DataFrame:
    x, t_x, big_t = bg.summary(rows)
    rows = rows.copy()
    rows["bg_p_alive"] = p_alive(bg.params, x, t_x, big_t)
    rows["bg_p_no_order"] = p_no_order(bg.params, x, t_x, big_t, bg.horizon)
    return rows


def scores_at(
    data: pd.DataFrame, cutoff: pd.Timestamp, thresholds: WarningThresholds
) -> dict[str, float]:
    """Every ranking's ROC-AUC on ``cutoff``'s rows, fitted on the rows labelled by then."""
    test = data[data.cutoff == cutoff]
    train = data[data.cutoff + timedelta(days=HORIZON_DAYS) <= cutoff]
    labels = test[LABEL].to_numpy()
    raw: dict[str, np.ndarray] = {}
    for baseline in all_baselines(HORIZON_DAYS):
        baseline.fit(train)
        raw[baseline.name] = baseline.raw(test)
    model = fit_model(train)
    empty = np.isnan(train[list(INPUT_FEATURES)].to_numpy(dtype=float)).all(axis=0)
    raw["model"] = model.predict_proba(_matrix(test, list(INPUT_FEATURES), empty))[:, 1]
    raw["model, slower"] = _booster_fit(
        train,
        list(INPUT_FEATURES),
        learning_rate=0.03,
        max_iter=300,
        max_depth=2,
        early_stopping=False,
    )(test)
    raw["model, chosen on an inner time split"] = _inner_choice(train)(test)
    bg = BGNBD(HORIZON_DAYS)
    bg.fit(train)
    with_bg = _booster_fit(_with_bgnbd(bg, train), list(INPUT_FEATURES) + BG_INPUTS)
    raw["model + BG/NBD inputs"] = with_bg(_with_bgnbd(bg, test))
    raw["rank blend"] = sum(rankdata(raw[k]) for k in ("model", "logistic", "bgnbd"))
    chance, _ = silence_chance(
        *(test[c].to_numpy(dtype=float) for c in SILENCE_INPUTS), thresholds.sales_drop
    )
    raw["sales_drop's silence chance"] = -chance
    return {name: float(roc_auc_score(labels, values)) for name, values in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="an export (with --mapping)")
    parser.add_argument("--mapping", type=Path)
    parser.add_argument(
        "--simulated", type=int, metavar="CUSTOMERS", help="a simulated book instead (540 days)"
    )
    args = parser.parse_args()
    if args.simulated:
        produced, _ = simulate(args.simulated, 1, parse_start("2024-01-01"), 540, 3, 0)
        events = [decode_event(e.payload) for e in produced]
    elif args.events and args.mapping:
        loaded = load_exports([(args.events, args.mapping)])
        events = [e for part in loaded for e in part.events]
    else:
        parser.error("give --events and --mapping, or --simulated")
    events.sort(key=lambda e: e.occurred_at)
    cutoffs = cutoffs_every(events, 7, HORIZON_DAYS)
    tests = [cutoffs[-1], cutoffs[-5], cutoffs[-9]]
    print(f"building the training set: {len(cutoffs)} weekly cutoffs ...", flush=True)
    settings = load_settings()
    data = build_training_set(events, cutoffs, HORIZON_DAYS, settings.warnings)
    columns = {}
    for cutoff in tests:
        print(f"fitting for the test cutoff {cutoff.date()} ...", flush=True)
        columns[str(cutoff.date())] = scores_at(data, pd.Timestamp(cutoff), settings.warnings)
    table = pd.DataFrame(columns)
    table["mean"] = table.mean(axis=1)
    best = table.loc[["recency", "frequency", "logistic", "bgnbd"], "mean"].max()
    table["over best baseline"] = table["mean"] - best
    print("| ranking | " + " | ".join(table.columns) + " |")
    print("|---" * (len(table.columns) + 1) + "|")
    for name, row in table.iterrows():
        print(
            f"| {name} | "
            + " | ".join(
                f"{v:+.4f}" if c.startswith("over") else f"{v:.4f}" for c, v in row.items()
            )
            + " |"
        )


if __name__ == "__main__":
    main()
