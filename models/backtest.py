"""Backtest the warning rules on a history, in batch (no broker).

Run: ``churnwatch backtest --events PATH --mapping MAPPING --out DIR``.

The history goes through the worker's own logic
(:func:`pipeline.processing.run_history`), then every warning episode is
scored against what the customer did next (churns, precision, recall, lead
time and base rate as :mod:`models.outcomes` defines them).

The churn model is backtested **walk-forward**, as a worker whose model is
retrained every ``retrain_every_days`` would have run: each retraining sees
only the training rows whose label horizon had ended by then (features before
the cutoff, labels before the retraining day), and the model then serves the
sweeps until the next one. Its ``churn_risk`` episodes are scored from the day
the first model served: recall over the churns the plain rule flags from then
on, and the summary adds the base rate over that same period.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from churnwatch.core.settings import ModelSettings
from churnwatch.core.thresholds import WarningThresholds
from churnwatch.models.baselines import LABEL
from churnwatch.models.budget import budget_figures
from churnwatch.models.dataset import (
    build_training_set,
    cutoffs_every,
    order_amounts,
    order_times,
    training_rows,
)
from churnwatch.models.outcomes import (
    EARLY_DAYS,
    TOP_SHARE,
    VALUE_DAYS,
    OrderValues,
    base_rate,
    base_rates,
    find_churns,
    honest_score,
)
from churnwatch.models.train import fit_model, rhythm_rates, usual_values
from churnwatch.pipeline.boosters import CompiledBoosters, probe_rows
from churnwatch.pipeline.events import CustomerEvent, CustomerUpdated, WarningRecord
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.rules import RULES
from churnwatch.pipeline.scoring import INPUT_FEATURES, RHYTHMS, ChurnModel
from churnwatch.pipeline.state import DAY, StateBlock, to_epoch

#: Iterates a history's events, e.g. with a progress bar (tqdm fits).
Bar = Callable[[list[CustomerEvent]], Iterable[CustomerEvent]]

#: Fewer training rows than this make a model that is mostly noise: the
#: walk-forward waits until the history has that many.
MIN_TRAIN_ROWS = 500
#: ... and fewer churned (or kept) rows than this: nothing to learn the other side from
#: (the cross-validated calibration cannot even split them).
MIN_CLASS_ROWS = 10


@dataclass(frozen=True)
class ServedModel:
    """One walk-forward model and when it took over."""

    serving_from: float
    model: ChurnModel
    train_rows: int
    train_cutoffs: tuple[date, date]


class CutoffRows:
    """The training rows (:func:`models.dataset.training_rows`) at cutoffs, taken from
    a run's own states in the sweep at each cutoff (or built in a pass of their
    own first where the cutoffs are not sweep boundaries)."""

    def __init__(
        self,
        events: list[CustomerEvent],
        thresholds: WarningThresholds,
        sweep_every_seconds: float,
        every_days: int,
        horizon_days: float,
        progress: Callable[[str], None] = lambda _message: None,
        bar: Bar = iter,
    ) -> None:
        self.thresholds = thresholds
        self.horizon = horizon_days * DAY
        self.cutoffs = cutoffs_every(events, every_days, horizon_days)
        self.orders = order_times(events)
        self.frames: list[pd.DataFrame] = []  # a frame per cutoff
        self.taken = 0  # cutoffs whose rows are in
        if any(to_epoch(c) % sweep_every_seconds for c in self.cutoffs):
            progress(f"building the training set ({len(self.cutoffs)} cutoffs)")
            self.frames = [
                build_training_set(events, self.cutoffs, horizon_days, thresholds, progress=bar)
            ]
            self.taken = len(self.cutoffs)
        elif self.cutoffs:
            progress(f"taking training rows at {len(self.cutoffs)} cutoffs as the history runs")

    def before_sweep(self, boundary: float, states: StateBlock) -> None:
        """Take the rows of every cutoff up to ``boundary``."""
        while self.taken < len(self.cutoffs) and to_epoch(self.cutoffs[self.taken]) <= boundary:
            cutoff = self.cutoffs[self.taken]
            rows = training_rows(states, cutoff, self.orders, self.horizon, self.thresholds)
            if rows:
                self.frames.append(pd.DataFrame(rows))
            self.taken += 1


class WalkForward:
    """The models a worker retrained every ``retrain_every_days`` would have served,
    trained while the history runs through :func:`~pipeline.processing.run_history`.

    Training rows are taken at cutoffs every ``model_settings.cutoff_every_days``
    (as ``churnwatch train`` takes them) from the run's own states, in the sweep
    at the cutoff, when every event before it and none after is applied: one
    pass over the history instead of one for the training set and one for the
    warnings. Where the cutoffs are not sweep boundaries (a history in another
    time zone), the training set is built in a pass of its own first
    (:func:`models.dataset.build_training_set`); the rows are the same. A model
    retrained on day D learns only from the rows whose cutoff plus horizon is at
    or before D, so none of its labels looks past D; it serves the sweeps from D on.
    """

    def __init__(
        self,
        events: list[CustomerEvent],
        thresholds: WarningThresholds,
        sweep_every_seconds: float,
        model_settings: ModelSettings,
        retrain_every_days: float,
        progress: Callable[[str], None] = lambda _message: None,
        bar: Bar = iter,
    ) -> None:
        self.settings = model_settings
        self.horizon = model_settings.horizon_days * DAY
        self.every = retrain_every_days * DAY
        self.progress = progress
        self.rows = CutoffRows(
            events,
            thresholds,
            sweep_every_seconds,
            model_settings.cutoff_every_days,
            model_settings.horizon_days,
            progress,
            bar,
        )
        cutoffs = self.rows.cutoffs
        self.last = to_epoch(events[-1].occurred_at)
        self.served: list[ServedModel] = []
        self.day = to_epoch(cutoffs[0]) + self.horizon if cutoffs else math.inf

    def before_sweep(self, boundary: float, states: StateBlock) -> None:
        """Take the rows of a cutoff at ``boundary``; retrain on every day up to it."""
        self.rows.before_sweep(boundary, states)
        self._retrain_until(min(boundary, self.last))

    def finish(self) -> list[ServedModel]:
        """Retrain on the days after the last sweep too (the models a worker would have
        had by the end of the data); every model, oldest first."""
        self._retrain_until(self.last)
        return self.served

    def model_at(self, _boundary: float) -> ChurnModel | None:
        """The model serving the sweep just prepared by :meth:`before_sweep`."""
        return self.served[-1].model if self.served else None

    def _retrain_until(self, until: float) -> None:
        while self.day <= until:
            self._retrain(self.day)
            self.day += self.every

    def _retrain(self, day: float) -> None:
        # In epoch seconds: a horizon is so many days of 24 hours, whatever the
        # clocks did (as the labels count it).
        if not self.rows.frames:
            return
        data = pd.concat(self.rows.frames, ignore_index=True)
        rows = data[_epochs(data["cutoff"]) + self.horizon <= day]
        counts = rows[LABEL].value_counts()
        if len(rows) < MIN_TRAIN_ROWS or len(counts) != 2 or counts.min() < MIN_CLASS_ROWS:
            return
        self.progress(f"retraining as of {_date(day)}: {len(rows)} rows")
        estimator = fit_model(rows)
        usual = usual_values(rows).to_numpy(dtype=float)
        model = ChurnModel(
            version=f"backtest-{_date(day)}",
            estimator=estimator,
            usual=usual,
            horizon_days=self.settings.horizon_days,
            # the churn rate of its training rows, as a card gives a served model: the
            # book the warning's entry and the health score's risk part are set by
            book_churn_rate=float(rows[LABEL].mean()),
            rhythm_churn_rates=tuple(rhythm_rates(rows)),
            created_at=day,
            # Scored as a worker serving it would: compiled, checked to match.
            compiled=CompiledBoosters.compile(estimator, probe_rows(usual)),
        )
        cutoff_range = (rows["cutoff"].min().date(), rows["cutoff"].max().date())
        self.served.append(ServedModel(day, model, len(rows), cutoff_range))


def walk_forward(
    events: list[CustomerEvent],
    thresholds: WarningThresholds,
    sweep_every_seconds: float,
    model_settings: ModelSettings,
    retrain_every_days: float,
    progress: Callable[[str], None] = lambda _message: None,
    bar: Bar = iter,
) -> tuple[list[WarningRecord], list[ServedModel], list[pd.DataFrame]]:
    """The warnings of ``events`` with a :class:`WalkForward` model serving, its models
    and the rows of its cutoffs. ``bar(events)`` iterates them (e.g. with a progress bar)."""
    walk = WalkForward(
        events, thresholds, sweep_every_seconds, model_settings, retrain_every_days, progress, bar
    )
    progress("running the rules and the model over the history")
    _, records = run_history(
        bar(events),
        thresholds,
        sweep_every_seconds,
        model_at=walk.model_at,
        before_sweep=walk.before_sweep,
    )
    return records, walk.finish(), walk.rows.frames


def _epochs(moments: pd.Series) -> pd.Series:
    """Epoch seconds of timezone-aware timestamps (:func:`to_epoch` of each, at once)."""
    return (moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def backtest(
    events: list[CustomerEvent],
    thresholds: WarningThresholds,
    sweep_every_seconds: float,
    horizon_days: float,
    out: Path,
    model_settings: ModelSettings | None = None,
    retrain_every_days: float = 28,
    progress: Callable[[str], None] = lambda _message: None,
    bar: Bar = iter,
) -> dict[str, Any]:
    """Run the rules over ``events`` (time-ordered); write warnings.csv and summary.json.

    With ``model_settings``, a walk-forward churn model serves as well (see
    the module docstring) and its ``churn_risk`` episodes are scored too.
    """
    if not events:
        raise ValueError("no events to backtest")
    horizon = horizon_days * DAY
    served: list[ServedModel] = []
    if model_settings is not None:
        records, served, frames = walk_forward(
            events,
            thresholds,
            sweep_every_seconds,
            model_settings,
            retrain_every_days,
            progress,
            bar,
        )
    else:
        progress("running the rules over the history")
        taker = CutoffRows(
            events,
            thresholds,
            sweep_every_seconds,
            ModelSettings().cutoff_every_days,
            horizon_days,
            progress,
            bar,
        )
        _, records = run_history(
            bar(events), thresholds, sweep_every_seconds, before_sweep=taker.before_sweep
        )
        frames = taker.frames
    orders = order_times(events)
    data_start = to_epoch(events[0].occurred_at)
    data_end = to_epoch(events[-1].occurred_at)
    churns = find_churns(orders, data_end, horizon)

    opened = openings(records)
    values = OrderValues(order_amounts(events))
    rate = base_rate(orders, data_start, data_end, horizon)
    # Early warnings are about customers not yet flagged: like them, the same rhythm.
    unflagged, rhythms = base_rates(orders, data_start, data_end, horizon, active_days=horizon_days)
    rules: dict[str, dict[str, Any]] = {
        r: honest_score(
            opened[r],
            orders,
            churns,
            data_end,
            horizon,
            rate,
            unflagged_base=unflagged,
            rhythm_rates=rhythms,
            values=values,
        )
        for r, rule in RULES.items()
        if not rule.needs_model
    }
    budget = budget_figures(
        frames,
        open_episodes(records),
        lambda rows, at: _served_probabilities(served, rows, at),
        last_owners(events),
        churns,
        values,
        horizon_days,
        (model_settings or ModelSettings()).calls_per_rep_week,
        (model_settings or ModelSettings()).customers_per_rep,
        data_end,
    )
    model_summary: dict[str, Any] | None = None
    if served:
        since = served[0].serving_from
        later = [c for c in churns if c.flagged_at >= since]
        rate_since = base_rate(orders, data_start, data_end, horizon, since)
        unflagged_since, rhythms_since = base_rates(
            orders, data_start, data_end, horizon, since, active_days=horizon_days
        )
        rules["churn_risk"] = honest_score(
            opened["churn_risk"],
            orders,
            later,
            data_end,
            horizon,
            rate_since,
            first_sweeps(served, sweep_every_seconds),
            unflagged_since,
            rhythms_since,
            values,
        )
        model_summary = {
            "retrain_every_days": retrain_every_days,
            "serving_from": _date(since),
            "churns_since": len(later),
            "base_rate_since": rate_since,
            "unflagged_base_rate_since": unflagged_since,
            "versions": [
                {
                    "version": s.model.version,
                    "train_rows": s.train_rows,
                    "train_cutoffs": [c.isoformat() for c in s.train_cutoffs],
                }
                for s in served
            ],
        }
    plain = [(c.customer_id, c.flagged_at) for c in churns]
    rules["plain_90_day" if horizon_days == 90 else f"plain_{horizon_days:g}_day"] = honest_score(
        plain, orders, churns, data_end, horizon, rate, unflagged_base=unflagged, values=values
    )  # (never early: no customers-like-them figure)
    summary = {
        "horizon_days": horizon_days,
        "customers": len({e.customer_id for e in events}),
        "events": len(events),
        "churns": len(churns),
        "base_rate": rate,
        "unflagged_base_rate": unflagged,
        "rhythm_base_rates": {
            label: round(rhythms[g], 3) for g, label in enumerate(RHYTHMS) if g in rhythms
        },
        "value": {
            "what": f"order value in the {VALUE_DAYS} days up to the moment",
            "top_share": TOP_SHARE,
            "top_customers": len(values.top),
            "top_threshold": round(values.top_threshold, 2),
            "early_days": EARLY_DAYS,
        },
        "rules": rules,
        "model": model_summary,
        "ranking": ranking(frames, served),
        "budget": budget,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_warnings_csv(records, out / "warnings.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def ranking(frames: list[pd.DataFrame], served: list[ServedModel]) -> dict[str, Any] | None:
    """How well each score ranks the customers active at the cutoffs by whether they
    churn within the horizon (ROC-AUC, higher is better; 0.5 is chance): the
    health score (low: risky), recency, frequency and, on the cutoffs a
    walk-forward model served (trained only on labels known before them), the
    model. None without two classes to tell apart."""
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    labels = data[LABEL].to_numpy()
    if len(set(labels.tolist())) < 2:
        return None

    def auc(scores: Any, where: Any = None) -> float | None:
        picked = np.ones(len(labels), bool) if where is None else where
        if len(set(labels[picked].tolist())) < 2:
            return None
        return round(float(roc_auc_score(labels[picked], np.asarray(scores)[picked])), 3)

    health = data["health_score"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "cutoffs": int(data["cutoff"].nunique()),
        "rows": len(data),
        "churn_rate": round(float(labels.mean()), 3),
        "health_score": auc(-np.nan_to_num(health, nan=np.nanmean(health))),
        "recency": auc(data["days_since_last_order"].fillna(0).to_numpy(dtype=float)),
        "frequency": auc(-data["rfm_orders_52w"].to_numpy(dtype=float)),
    }
    if served:
        at = _epochs(data["cutoff"]).to_numpy()
        model = np.full(len(data), np.nan)
        inputs = data[list(INPUT_FEATURES)].to_numpy(dtype=float)
        for s, after in zip(served, [*served[1:], None], strict=True):
            rows = (at >= s.serving_from) & (at < (after.serving_from if after else np.inf))
            if rows.any():
                model[rows] = s.model.probabilities(inputs[rows])
        scored = ~np.isnan(model)
        out["model"] = auc(np.nan_to_num(model), scored)
        out["health_score_where_model"] = auc(-np.nan_to_num(health, nan=50.0), scored)
        out["model_rows"] = int(scored.sum())
    return out


def open_episodes(records: list[WarningRecord]) -> Callable[[str, float], bool]:
    """Whether a warning of a customer is open at a moment (from the records)."""
    spans: dict[str, dict[str, list[float]]] = {}
    for r in records:
        span = spans.setdefault(r.customer_id, {}).setdefault(r.warning_id, [math.inf, math.inf])
        if r.status == "opened":
            span[0] = to_epoch(r.opened_at)
        elif r.status == "resolved":
            span[1] = to_epoch(r.at)

    def open_at(customer_id: str, t: float) -> bool:
        return any(start <= t < end for start, end in spans.get(customer_id, {}).values())

    return open_at


def last_owners(events: list[CustomerEvent]) -> dict[str, str]:
    """Each customer's owner as its latest master-data record names it."""
    return {e.customer_id: e.owner for e in events if isinstance(e, CustomerUpdated)}


def _served_probabilities(
    served: list[ServedModel], rows: pd.DataFrame, at: float
) -> np.ndarray | None:
    """The walk-forward model serving at ``at``'s probabilities for ``rows`` (None: none)."""
    serving = [s for s in served if s.serving_from <= at]
    if not serving:
        return None
    return serving[-1].model.probabilities(rows[list(INPUT_FEATURES)].to_numpy(dtype=float))


def openings(records: list[WarningRecord]) -> dict[str, list[tuple[str, float]]]:
    """Each warning type's episode openings as (customer, epoch seconds)."""
    opened: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for record in records:
        if record.status == "opened":
            opened[record.warning_type].append((record.customer_id, to_epoch(record.opened_at)))
    return opened


def first_sweeps(served: list[ServedModel], sweep_every_seconds: float) -> frozenset[float]:
    """The sweep each model served first: its backlog opens there at once (not steady)."""
    return frozenset(
        math.ceil(s.serving_from / sweep_every_seconds) * sweep_every_seconds for s in served
    )


def write_warnings_csv(records: list[WarningRecord], path: Path) -> None:
    columns = [
        "warning_id",
        "customer_id",
        "warning_type",
        "status",
        "severity",
        "opened_at",
        "at",
        "summary",
        "evidence",
        "churn_probability",
        "model_version",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in records:
            writer.writerow(
                [
                    r.warning_id,
                    r.customer_id,
                    r.warning_type,
                    r.status,
                    r.severity,
                    r.opened_at.isoformat(),
                    r.at.isoformat(),
                    r.summary,
                    json.dumps(r.evidence, sort_keys=True),
                    "" if r.churn_probability is None else r.churn_probability,
                    r.model_version,
                ]
            )


#: The early precision over customers like them below which the backtest says a
#: warning knows little beyond the order rhythm.
BEYOND_RHYTHM = 0.05


def format_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables: every episode, then the early warnings only."""
    lines = [
        f"base rate {summary['base_rate']} (customers not yet flagged: "
        f"{summary['unflagged_base_rate']}), churns {summary['churns']}, "
        f"horizon {summary['horizon_days']:g} days",
        "",
        "Every episode, as opened:",
        "",
        "| rule | customers warned | episodes | precision | recall | median lead (days) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["rules"].items():
        lines.append(
            f"| {name} | {r['warned']} | {r['episodes']} | {r['precision']} | {r['recall']} "
            f"| {r['median_lead_days']} |"
        )
    lines += [
        "",
        "Early warnings only: customers already silent past the horizon left out (lost-"
        "customer notices), and a new model's first day; recall and lead from the last "
        "order on:",
        "",
        "| rule | lost-customer notices | early episodes | precision | over base rate "
        "| over not yet flagged | over customers like them | recall | median lead (days) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["rules"].items():
        e = r["early"]
        lines.append(
            f"| {name} | {r['lost_customer_notices']} | {e['episodes']} | {e['precision']} "
            f"| {e['precision_over_base']} | {e['precision_over_unflagged']} "
            f"| {e['precision_over_like']} | {e['recall']} | {e['median_lead_days']} |"
        )
    value = summary.get("value")
    if value:
        lines += [
            "",
            f"By value (each customer's {value['what']}; top {value['top_share']:.0%}: "
            f"{value['top_customers']} customers, best year >= {value['top_threshold']:,.0f}): "
            f"lost revenue warned early = at least {value['early_days']} days before the "
            "plain rule:",
            "",
            "| rule | lost revenue warned early | precision by value "
            "| top 20%: warned early | top 20%: precision | rest: warned early "
            "| rest: precision |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in summary["rules"].items():
            v = r["early"].get("value")
            if v is None:
                continue
            top, rest = v["top_20"], v["rest"]
            lines.append(
                f"| {name} | {v['lost_revenue_warned_early']} | {v['precision_by_value']} "
                f"| {top['lost_revenue_warned_early']} | {top['precision']} "
                f"| {rest['lost_revenue_warned_early']} | {rest['precision']} |"
            )
    budget = summary.get("budget")
    if budget:
        lines += [
            "",
            f"At an alert budget of {budget['calls_per_rep_week']} customers a rep a week "
            f"({budget['books']} books, {budget['cutoffs']} cutoffs, "
            f"{budget['churns_reachable']} churns one could have called early), "
            "what each ranking finds early:",
            "",
            "| ranking | churns found | of churns | lost revenue found | of lost revenue "
            "| top 20%: of lost revenue |",
            "|---|---|---|---|---|---|",
        ]
        for name, f in budget["strategies"].items():
            lines.append(
                f"| {name} | {f['churns_found']} | {f['of_churns']} "
                f"| {f['lost_revenue_found']:,.0f} | {f['of_lost_revenue']} "
                f"| {f['top_20']['of_lost_revenue']} |"
            )
    ranked = summary.get("ranking")
    if ranked:
        lines += [
            "",
            f"Ranking the customers active at {ranked['cutoffs']} cutoffs ({ranked['rows']} "
            f"rows, churn rate {ranked['churn_rate']}) by who churns next, ROC-AUC: health "
            f"score {ranked['health_score']}, recency {ranked['recency']}, frequency "
            f"{ranked['frequency']}"
            + (
                f"; on the {ranked['model_rows']} rows a walk-forward model served: model "
                f"{ranked['model']}, health score {ranked['health_score_where_model']}"
                if "model" in ranked
                else ""
            ),
        ]
    rhythms = ", ".join(f"{k} {v}" for k, v in summary["rhythm_base_rates"].items())
    lines += ["", f"not yet flagged, by orders in the past year: {rhythms}"]
    for name, r in summary["rules"].items():
        margin = r["early"].get("precision_over_like")
        if margin is not None and margin < BEYOND_RHYTHM:
            lines.append(
                f"{name}: {margin:+.3f} over customers like them: on this history it knows "
                "little beyond the customers' order rhythm (read its lead and its value "
                "figures, not its precision)"
            )
    model = summary.get("model")
    if model:
        lines += [
            "",
            f"churn_risk: {len(model['versions'])} walk-forward models, retrained every "
            f"{model['retrain_every_days']:g} days, serving from {model['serving_from']}; "
            f"scored on the {model['churns_since']} churns flagged since then "
            f"(base rate {model['base_rate_since']} over that period, "
            f"{model['unflagged_base_rate_since']} for customers not yet flagged)",
        ]
    return "\n".join(lines)
