"""The training report next to the card: ``report.md`` with four PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.inspection import permutation_importance  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from churnwatch.models.baselines import LABEL  # noqa: E402
from churnwatch.pipeline.scoring import INPUT_FEATURES  # noqa: E402
from churnwatch.pipeline.texts import FEATURE_LABELS  # noqa: E402

Vector = npt.NDArray[np.float64]
TOP_FEATURES = 15


def _roc(path: Path, labels: Vector, scores: dict[str, Vector]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, label=name, linewidth=2 if name == "model" else 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test rows")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _calibration(path: Path, table: list[dict[str, float]]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.plot([r["predicted"] for r in table], [r["observed"] for r in table], marker="o")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate")
    ax.set_title("Calibration, test rows")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _scores(path: Path, labels: Vector, scores: Vector) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(21)]
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="stayed")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="churned")
    ax.set(xlabel="churn probability", ylabel="customers", title="Score distribution, test rows")
    ax.legend()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _importance(path: Path, model: Any, rows: pd.DataFrame) -> list[tuple[str, float]]:
    x = rows[list(INPUT_FEATURES)].to_numpy(dtype=float)
    result = permutation_importance(
        model, x, rows[LABEL].to_numpy(), scoring="roc_auc", n_repeats=3, random_state=0
    )
    order = np.argsort(-result.importances_mean)[:TOP_FEATURES]
    top = [(INPUT_FEATURES[i], float(result.importances_mean[i])) for i in order]
    fig, ax = plt.subplots(figsize=(7, 5))
    labels = FEATURE_LABELS["en"]
    ax.barh([labels[n] for n, _ in reversed(top)], [v for _, v in reversed(top)])
    ax.set(xlabel="drop in ROC-AUC when shuffled", title="Feature importance, test rows")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return top


def format_comparison(card: dict[str, Any]) -> str:
    """The model and every baseline on the test rows, as a Markdown table."""
    head = "| scorer | ROC-AUC | PR-AUC | Brier | precision top 10% | lift top 10% |"
    lines = [head, "|---|---|---|---|---|---|"]
    rows = {"model": card["metrics"]["model"], **card["metrics"]["baselines"]}
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['roc_auc']:.3f} | {m['pr_auc']:.3f} | {m['brier']:.3f} "
            f"| {m['precision_top10']:.3f} | {m['lift_top10']:.2f} |"
        )
    return "\n".join(lines)


def write_report(
    folder: Path,
    card: dict[str, Any],
    model: Any,
    test_rows: pd.DataFrame,
    scores: Vector,
    baseline_scores: dict[str, Vector],
) -> dict[str, Any]:
    """Write ``report.md`` and its plots; returns what the card records of them."""

    labels = test_rows[LABEL].to_numpy(dtype=float)
    _roc(folder / "roc.png", labels, {"model": scores, **baseline_scores})
    _calibration(folder / "calibration.png", card["calibration"])
    _scores(folder / "scores.png", labels, scores)
    top = _importance(folder / "importance.png", model, test_rows)
    window = card["data_window"]
    lines = [
        f"# Churn model {card['version']}",
        "",
        f"Trained {card['created_at']} from {card['source']}.",
        f"Label: {card['label']['definition']}; active customers: {card['label']['active']}.",
        f"Training rows: {window['train_rows']:,} (cutoffs {window['train_cutoffs'][0][:10]} "
        f"to {window['train_cutoffs'][1][:10]}, churn rate {window['train_churn_rate']:.1%}); "
        f"test rows: {window['test_rows']:,} (cutoff {window['test_cutoff'][:10]}, "
        f"churn rate {window['test_churn_rate']:.1%}).",
        "",
        "## Model against the baselines (test rows)",
        "",
        format_comparison(card),
        "",
        "![ROC](roc.png) ![Calibration](calibration.png)",
        "",
        "![Scores](scores.png)",
        "",
        "## What the model relies on",
        "",
        "| feature | drop in ROC-AUC when shuffled |",
        "|---|---|",
        *[f"| {FEATURE_LABELS['en'][n]} (`{n}`) | {v:.4f} |" for n, v in top],
        "",
        "![Importance](importance.png)",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
    return {
        "file": "report.md",
        "plots": ["roc.png", "calibration.png", "scores.png", "importance.png"],
        "importance": {n: round(v, 4) for n, v in top},
    }
