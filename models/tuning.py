"""Fit the warnings' thresholds to a company's own history (``churnwatch tune``).

Each warning type has a ladder of threshold sets (its rule's ``ladder`` in
:data:`pipeline.rules.RULES`, gathered in :data:`LADDERS`), from the
strictest to the loosest, with today's defaults on it. The history runs
through the worker's logic once per rung (every type on the same rung: the
types do not read each other's thresholds, so one run scores them all), and
each type's episodes are scored as the backtest's early warnings
(:func:`models.outcomes.honest_score`) on two parts of the history: episodes
opened before the split day (the **earlier** part, where the choice is made)
and from it on (the **later** part, where the choice is checked).

The goal: the rung that warns the most lost revenue early (the share of the
churns' lost revenue warned at least 30 days before the plain rule,
:func:`models.outcomes.value_figures`; ties: the higher recall from the last
order on, then the longer median lead) among those whose early precision on
the earlier part is at least ``over_like`` above that of customers like the
ones warned (not yet flagged, the same rhythm: what the warning knows beyond
the order rhythm), with at least ``min_episodes`` judged episodes. The plain
base rate is shown beside it, no longer the goal: a rung that only picks out
rare buyers beats it without knowing anything. A type no rung qualifies for
keeps its current thresholds, and the summary says so.

Outcomes of an episode opened near the split are seen in the later part's
events: on a history of a year or two there is no room for a gap of a whole
horizon between the parts. What keeps the check honest is that no episode
that chose a rung is among those that check it.

The churn model is retrained walk-forward once (:func:`models.backtest.walk_forward`),
and the same models serve every rung: the warning thresholds do not change
what the model learns. Before the rungs run, the pace a customer with few
orders is judged by (``sales_drop.prior_gap_days``) is set to the book's own
before the split (:func:`book_paces`), and each segment's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from churnwatch.core.settings import ModelSettings
from churnwatch.core.thresholds import WarningThresholds, deep_merge
from churnwatch.models.backtest import Bar, ServedModel, first_sweeps, openings, walk_forward
from churnwatch.models.dataset import order_amounts, order_times
from churnwatch.models.outcomes import (
    Churn,
    OrderValues,
    base_rate,
    base_rates,
    find_churns,
    honest_score,
)
from churnwatch.pipeline.events import CustomerEvent, CustomerUpdated
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.rules import RULES
from churnwatch.pipeline.scoring import ChurnModel
from churnwatch.pipeline.state import DAY, to_epoch

#: Each warning type's threshold sets, strictest first (each rule's ``ladder``).
LADDERS: dict[str, tuple[dict[str, float], ...]] = {
    kind: rule.ladder for kind, rule in RULES.items()
}

DEFAULT_LEVEL = 2  # the rung holding configs/default.yaml's values


class TuneError(Exception):
    """The history cannot be tuned on: the message says why."""


@dataclass(frozen=True)
class Part:
    """Episodes opened in [start, end) and the churns whose last order falls there."""

    name: str
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class Rung:
    """One type's figures at one rung of its ladder, on both parts."""

    level: int
    values: dict[str, float]
    earlier: dict[str, Any]
    later: dict[str, Any]


@dataclass
class Tuning:
    split: date
    over_like: float
    min_episodes: int
    base_rates: dict[str, float | None]
    rungs: dict[str, list[Rung]]
    chosen: dict[str, Rung | None]  # None: no rung met the goal, current thresholds kept
    #: The usual gap (days) before the split: "" the whole book's, and each
    #: segment's with enough customers (:func:`book_paces`).
    paces: dict[str, float]

    def overrides(self) -> dict[str, Any]:
        """The ``warnings:`` keys the chosen rungs and the paces set."""
        values: dict[str, Any] = {
            kind: dict(r.values) for kind, r in self.chosen.items() if r is not None
        }
        return deep_merge(values, pace_overrides(self.paces))


def rung_thresholds(base: WarningThresholds, level: int) -> WarningThresholds:
    """``base`` with every type's thresholds at ``level`` of its ladder."""
    values = {kind: ladder[level] for kind, ladder in LADDERS.items()}
    return WarningThresholds(**deep_merge(base.model_dump(), values))


def qualifies(figures: dict[str, Any], over_like: float, least: int) -> bool:
    """Whether early figures meet the goal: ``least`` judged episodes, precision at
    least ``over_like`` above customers like the ones warned."""
    margin = figures.get("precision_over_like")
    return margin is not None and figures["judged"] >= least and margin >= over_like - 1e-9


def warned_value(figures: dict[str, Any]) -> float:
    """The share of lost revenue the figures warned early (0 without value figures)."""
    return float((figures.get("value") or {}).get("lost_revenue_warned_early") or 0.0)


def choose(rungs: list[Rung], over_like: float, least: int) -> Rung | None:
    """The rung that warned the most lost revenue early on the earlier part (ties:
    the higher recall, the longer median lead, then the stricter rung) among those
    that meet the goal there."""
    eligible = [r for r in rungs if qualifies(r.earlier, over_like, least)]
    if not eligible:
        return None
    return max(
        eligible,
        key=lambda r: (
            warned_value(r.earlier),
            r.earlier["recall"] or 0.0,
            r.earlier["median_lead_days"] or 0.0,
            -r.level,
        ),
    )


def part_figures(
    opened: list[tuple[str, float]],
    orders: dict[str, list[float]],
    churns: list[Churn],
    data_end: float,
    horizon: float,
    part: Part,
    base: float | None,
    unsteady: frozenset[float],
    rhythm_rates: dict[int, float],
    values: OrderValues | None = None,
) -> dict[str, Any]:
    """One type's early-warning figures on one part of the history (by value too,
    with ``values``)."""
    mine = [(c, t) for c, t in opened if part.holds(t)]
    result = honest_score(
        mine,
        orders,
        [c for c in churns if part.holds(c.last_order)],
        data_end,
        horizon,
        base,
        unsteady,
        rhythm_rates=rhythm_rates,
        values=values,
    )
    return dict(result["early"])


def tune(
    events: list[CustomerEvent],
    thresholds: WarningThresholds,
    sweep_every_seconds: float,
    horizon_days: float,
    model_settings: ModelSettings | None,
    split_at: datetime | None = None,
    over_like: float = 0.05,
    min_episodes: int = 20,
    retrain_every_days: float = 28,
    progress: Callable[[str], None] = lambda _message: None,
    bar: Bar = iter,
) -> Tuning:
    """Score every rung of :data:`LADDERS` on ``events`` (time-ordered) and choose one
    per type (see the module docstring). ``split_at`` defaults to the middle of the
    period whose episodes can be judged (from when the first model serves, or 90
    days in without a model, to a horizon before the data ends)."""
    if not events:
        raise TuneError("no events to tune on")
    horizon = horizon_days * DAY
    data_start, data_end = to_epoch(events[0].occurred_at), to_epoch(events[-1].occurred_at)
    levels = len(next(iter(LADDERS.values())))
    served: list[ServedModel] = []
    if model_settings is not None:
        # The models do not read the warning thresholds: train them once, first,
        # so the split (from the first model's day) is known before the rungs run.
        progress("training the churn model walk-forward")
        _, served, _ = walk_forward(
            events,
            thresholds,
            sweep_every_seconds,
            model_settings,
            retrain_every_days,
            progress,
            bar,
        )
    first_judged = served[0].serving_from if served else data_start + 90 * DAY
    last_judged = data_end - horizon
    if last_judged <= first_judged:
        raise TuneError(
            "the history is too short to tune on: no episode opened after "
            f"{_day(first_judged)} can be judged {horizon_days:g} days later"
        )
    split = to_epoch(split_at) if split_at else (first_judged + last_judged) / 2
    if not first_judged < split < last_judged:
        raise TuneError(
            f"the split day {_day(split)} must fall between {_day(first_judged)} and "
            f"{_day(last_judged)} (the period whose episodes can be judged)"
        )
    orders = order_times(events)
    values = OrderValues(order_amounts(events))
    paces = book_paces(orders, split, segments_before(events, split))
    thresholds = WarningThresholds(**deep_merge(thresholds.model_dump(), pace_overrides(paces)))
    opened_by_level: list[dict[str, list[tuple[str, float]]]] = []
    for level in range(levels):
        progress(f"rung {level + 1} of {levels}: running the warnings over the history")
        _, records = run_history(
            bar(events),
            rung_thresholds(thresholds, level),
            sweep_every_seconds,
            model_at=_serving(served),
        )
        opened_by_level.append(openings(records))
    parts = (Part("earlier", first_judged, split), Part("later", split, data_end))
    churns = find_churns(orders, data_end, horizon)
    bases = {
        p.name: base_rate(orders, data_start, data_end, horizon, since=p.start, until=p.end)
        for p in parts
    }
    # customers like the ones warned: not yet flagged, the same rhythm (as the backtest)
    rhythms = {
        p.name: base_rates(
            orders, data_start, data_end, horizon, p.start, horizon_days, until=p.end
        )[1]
        for p in parts
    }
    unsteady = first_sweeps(served, sweep_every_seconds)
    kinds = [k for k in LADDERS if k != "churn_risk" or served]
    rungs: dict[str, list[Rung]] = {}
    for kind in kinds:
        rungs[kind] = [
            Rung(
                level,
                LADDERS[kind][level],
                *(
                    part_figures(
                        opened_by_level[level][kind],
                        orders,
                        churns,
                        data_end,
                        horizon,
                        p,
                        bases[p.name],
                        unsteady,
                        rhythms[p.name],
                        values,
                    )
                    for p in parts
                ),
            )
            for level in range(levels)
        ]
    chosen = {k: choose(r, over_like, min_episodes) for k, r in rungs.items()}
    return Tuning(
        datetime.fromtimestamp(split, tz=UTC).date(),
        over_like,
        min_episodes,
        bases,
        rungs,
        chosen,
        paces,
    )


#: Fewest customers with two orders or more before the split for a pace.
PACE_CUSTOMERS = 30


def segments_before(events: list[CustomerEvent], until: float) -> dict[str, str]:
    """Each customer's segment as its last profile before ``until`` gave it."""
    segments = {}
    for event in events:
        if isinstance(event, CustomerUpdated) and event.epoch < until and event.segment:
            segments[event.customer_id] = event.segment
    return segments


def book_paces(
    orders: dict[str, list[float]], until: float, segments: dict[str, str]
) -> dict[str, float]:
    """The usual days between orders before ``until``: the median of the mean gaps
    of the customers with two orders or more by then, for the whole book ("")
    and for each segment, wherever at least :data:`PACE_CUSTOMERS` customers
    have them. What a customer with a thin history is assumed to do
    (``sales_drop.prior_gap_days``)."""
    gaps: dict[str, list[float]] = {"": []}
    for customer, times in orders.items():
        before = [t for t in times if t < until]
        if len(before) >= 2 and before[-1] > before[0]:
            gap = (before[-1] - before[0]) / (len(before) - 1) / DAY
            gaps[""].append(gap)
            if customer in segments:
                gaps.setdefault(segments[customer], []).append(gap)
    return {
        group: round(float(median(values)), 1)
        for group, values in gaps.items()
        if len(values) >= PACE_CUSTOMERS
    }


def pace_overrides(paces: dict[str, float]) -> dict[str, Any]:
    """The ``warnings:`` keys that set the paces as ``sales_drop.prior_gap_days``."""
    values: dict[str, Any] = {}
    if "" in paces:
        values["sales_drop"] = {"prior_gap_days": paces[""]}
    segments = {s: {"sales_drop": {"prior_gap_days": p}} for s, p in paces.items() if s}
    if segments:
        values["segments"] = segments
    return values


def _serving(served: list[ServedModel]) -> Callable[[float], ChurnModel | None] | None:
    """The walk-forward model serving a sweep at ``boundary``, as it served the walk-forward run."""
    if not served:
        return None

    def model_at(boundary: float) -> ChurnModel | None:
        current = None
        for s in served:
            if s.serving_from <= boundary:
                current = s.model
        return current

    return model_at


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def _cells(figures: dict[str, Any], base: float | None) -> str:
    precision = figures["precision"]
    over = None if precision is None or base is None else round(precision - base, 3)
    value = figures.get("value") or {}
    return (
        f"{figures['judged']} | {precision} | {over} | {figures['precision_over_like']} "
        f"| {figures['recall']} | {value.get('lost_revenue_warned_early')} "
        f"| {figures['median_lead_days']}"
    )


def format_tuning(tuning: Tuning) -> str:
    """Every rung's figures on both parts, the chosen one marked, as Markdown."""
    earlier, later = tuning.base_rates["earlier"], tuning.base_rates["later"]
    lines = [
        f"split at {tuning.split}: base rate {earlier} before, {later} from then on; goal: "
        f"early precision at least {tuning.over_like:g} over customers like them on the "
        f"earlier part, with {tuning.min_episodes}+ judged episodes; then the most lost "
        "revenue warned early",
    ]
    if tuning.paces:
        each = ", ".join(
            f"{segment or 'the whole book'} {pace:g}" for segment, pace in tuning.paces.items()
        )
        lines.append(
            f"usual days between orders before the split: {each} "
            "(sales_drop.prior_gap_days: what a customer with few orders is judged by)"
        )
    for kind, rungs in tuning.rungs.items():
        chosen = tuning.chosen[kind]
        if not any(r.earlier["episodes"] or r.later["episodes"] for r in rungs):
            lines += ["", f"{kind}: never opens on this history at any rung (nothing it reads?)"]
            continue
        if chosen is None:
            verdict = "no rung meets the goal: thresholds left as they are"
        else:
            holds = qualifies(chosen.later, tuning.over_like, 1)
            verdict = (
                f"rung {chosen.level + 1}; on the later part precision "
                f"{chosen.later['precision']}, {chosen.later['precision_over_like']} over "
                f"customers like them ({'meets' if holds else 'misses'} the goal), recall "
                f"{chosen.later['recall']}, lost revenue warned early "
                f"{warned_value(chosen.later):.3f}"
            )
        lines += [
            "",
            f"{kind}: {verdict}",
            "",
            "| rung | earlier: judged | precision | over base | over like them | recall "
            "| lost revenue warned early | lead (days) | later: judged | precision "
            "| over base | over like them | recall | lost revenue warned early "
            "| lead (days) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rungs:
            mark = " (chosen)" if r is chosen else ""
            mark += " (default)" if r.level == DEFAULT_LEVEL else ""
            lines.append(
                f"| {r.level + 1}{mark} | {_cells(r.earlier, earlier)} | {_cells(r.later, later)} |"
            )
    return "\n".join(lines)


def write_settings(tuning: Tuning, config: Path, out: Path, source: str) -> None:
    """``config``'s settings with the chosen thresholds, the figures in a comment on top.

    Starts from the settings file's own text, never from the loaded settings, so
    nothing set from the environment (a password) is written out."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    overrides = tuning.overrides()
    raw = deep_merge(raw, {"warnings": overrides})
    WarningThresholds(**raw["warnings"])  # what is written must load
    header = [
        f"# Thresholds fitted by `churnwatch tune` on {source}",
        f"# ({datetime.now(UTC).date()}), starting from {config.name}.",
        "# Chosen on the episodes opened before the split day, checked on those after.",
        "#",
    ]
    header += [f"# {line}" if line else "#" for line in format_tuning(tuning).splitlines()]
    header += ["#", f"# tuned: {', '.join(overrides) or 'nothing'}", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "\n".join(header) + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
