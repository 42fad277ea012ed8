"""When the worker evaluates its customers (pure: no I/O, no Faust).

Events only update state (:func:`pipeline.apply.apply_event`); the rules
run in sweeps at fixed boundaries of the clock (every day by default), over
every customer of a partition. Because the rules never run "at the time of
whichever event happened to arrive", the warnings do not depend on how the
input topics interleave, and a batch run over history that sweeps at the same
boundaries produces the same warnings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

from churnwatch.core.thresholds import WarningThresholds
from churnwatch.pipeline.apply import PossibleCopy, apply_event
from churnwatch.pipeline.episodes import evaluate
from churnwatch.pipeline.events import CustomerEvent, WarningRecord
from churnwatch.pipeline.features import FeatureColumns, features_of, read_many
from churnwatch.pipeline.health import band_codes, health_of, record_health
from churnwatch.pipeline.ordering import Apply, Sequencer, Sweep
from churnwatch.pipeline.rules import Risk, Scores
from churnwatch.pipeline.scoring import ChurnModel, Matrix, feature_matrix, rhythm_groups
from churnwatch.pipeline.screening import changing
from churnwatch.pipeline.state import CustomerState, StateBlock

T = TypeVar("T")


def by_segment(
    block: StateBlock, rows: npt.NDArray[np.intp], as_of: float, thresholds: WarningThresholds
) -> Iterator[tuple[npt.NDArray[np.intp], WarningThresholds, FeatureColumns]]:
    """The features of ``rows`` as of ``as_of``, read with each customer's segment's
    windows. Per segment: the positions in ``rows`` of its customers, its
    thresholds and their features. Sweeps, the training set and the consistency
    check all read features through this, so a segment override means the same
    everywhere."""
    codes = block.used()["segment_code"][rows]
    # Segments with the same windows share one read, and segments with the same
    # thresholds one group: reads and rules cost per call, not per row.
    readings: dict[tuple[int, int, float], list[tuple[WarningThresholds, list[int]]]] = {}
    for code in np.unique(codes).tolist():
        t = thresholds.for_segment(block.segment_names[code])
        groups = readings.setdefault((t.recent_weeks, t.baseline_weeks, t.high_value_revenue), [])
        same = next((codes_of for known, codes_of in groups if known is t or known == t), None)
        if same is None:
            groups.append((t, [code]))
        else:
            same.append(code)
    for (recent, baseline, high_value), groups in readings.items():
        if len(readings) == 1:
            shared = np.arange(len(rows))
        else:
            shared = np.flatnonzero(np.isin(codes, [c for _, of in groups for c in of]))
        columns = read_many(block, rows[shared], as_of, recent, baseline, high_value)
        if len(groups) == 1:
            yield shared, groups[0][0], columns
            continue
        for t, codes_of in groups:
            picked = np.flatnonzero(np.isin(codes[shared], codes_of))
            yield shared[picked], t, {name: values[picked] for name, values in columns.items()}


def read_segmented(
    block: StateBlock, rows: npt.NDArray[np.intp], as_of: float, thresholds: WarningThresholds
) -> FeatureColumns:
    """:func:`by_segment`'s features, one array per feature in the order of ``rows``."""
    out: FeatureColumns = {}
    for positions, _, columns in by_segment(block, rows, as_of, thresholds):
        for name, values in columns.items():
            values = np.asarray(values)
            if name not in out:
                out[name] = np.empty(len(rows), dtype=values.dtype)
            out[name][positions] = values
    return out


def sweep(
    block: StateBlock,
    as_of: float,
    thresholds: WarningThresholds,
    model: ChurnModel | None = None,
    batch_size: int = 512,
    top_reasons: int = 3,
    observe: Callable[[Matrix, Matrix], None] | None = None,
    skip: npt.NDArray[np.bool_] | None = None,
    updated: set[int] | None = None,
    crossed: list[tuple[int, int, int]] | None = None,
) -> list[tuple[CustomerState, list[WarningRecord]]]:
    """Re-evaluate every customer of ``block`` at ``as_of`` (but the rows where
    ``skip`` is true); returns only those whose episodes changed, in the block's order.

    Features are read for all customers at once (per segment, whose
    thresholds they use); the rules decide in the same vectorised pass which
    customers' episodes open, resolve or get worse, and only those are
    evaluated one by one, which builds their records. With a ``model``, all
    customers are scored ``batch_size`` at a time and the reasons of every
    churn-risk warning that opens or worsens are computed in one call.
    ``observe(rows, probabilities)`` sees every scored batch (for metrics).
    Every swept customer's health score is kept in its state
    (:func:`pipeline.health.record_health`); the rows whose state that changed are
    added to ``updated``, and those whose stored score entered another band (or
    its first) to ``crossed``, as (row, score before, score now).
    """
    if not len(block):
        return []
    data = block.used()
    candidates = np.arange(len(block)) if skip is None else np.flatnonzero(~skip)
    if not len(candidates):
        return []
    groups = [
        (candidates[positions], t, columns)
        for positions, t, columns in by_segment(block, candidates, as_of, thresholds)
    ]
    matrices: list[Matrix] = []
    scores: list[Matrix] = []
    if model is not None:
        # Every customer in as few model calls as the batch size allows.
        matrices = [feature_matrix(columns) for _, _, columns in groups]
        everyone = np.vstack(matrices)
        scored = []
        for start in range(0, len(everyone), batch_size):
            chunk = everyone[start : start + batch_size]
            scored.append(model.probabilities(chunk))
            if observe is not None:
                observe(chunk, scored[-1])
        ends = np.cumsum([len(rows) for rows, _, _ in groups])[:-1]
        scores = list(np.split(np.concatenate(scored), ends))
    for g, (rows, t, columns) in enumerate(groups):
        probability = scores[g] if model is not None else None
        rate = model.book_churn_rate if model is not None else None
        score, parts = health_of(columns, t, probability, rate)
        before = block.col["health_score"][rows].copy() if crossed is not None else None
        kept = record_health(block, rows, as_of, score, parts, t.health.store_step, probability)
        if updated is not None:
            updated.update(kept.tolist())
        if before is not None and crossed is not None:
            now = block.col["health_score"][rows]
            was, new = band_codes(before), band_codes(now)
            for i in np.flatnonzero((was != new) & (new >= 0)).tolist():
                crossed.append((int(rows[i]), int(before[i]), int(now[i])))
    screens = []
    bounds: list[tuple[Matrix, Matrix]] = []
    for g, (rows, t, columns) in enumerate(groups):
        scored_here = None
        if model is not None:
            enter, leave = t.churn_risk.bounds_of(churn_rates(model, t, columns))
            bounds.append((enter, leave))
            scored_here = Scores(scores[g], enter, leave)
        screens.append(changing(columns, t, data["episode_severity"][rows], scored_here))
    # The reasons of every churn-risk warning that opens or worsens, in one call.
    reasons: dict[tuple[int, int], str] = {}
    speaking = [
        (g, int(i)) for g, screen in enumerate(screens) for i in np.flatnonzero(screen.speaks)
    ]
    if model is not None and speaking:
        texts = model.explain_many(
            np.array([matrices[g][i] for g, i in speaking]),
            [groups[g][1].language for g, _ in speaking],
            top_reasons,
        )
        reasons = dict(zip(speaking, texts, strict=True))
    changed: list[tuple[CustomerState, list[WarningRecord]]] = []
    for g, ((rows, t, columns), screen) in enumerate(zip(groups, screens, strict=True)):
        for i in np.flatnonzero(screen.change).tolist():
            state = CustomerState(block, int(rows[i]))
            risk = None
            if model is not None:
                row = matrices[g][i]
                explain = (
                    functools.partial(str, reasons[(g, i)])
                    if (g, i) in reasons
                    else functools.partial(model.explain, row, t.language, top_reasons)
                )
                enter, leave = bounds[g]
                risk = Risk(
                    float(scores[g][i]),
                    model.version,
                    model.horizon_days,
                    explain,
                    float(enter[i]),
                    float(leave[i]),
                )
            judged = (features_of(columns, i), screen.rows(i))
            records = evaluate(state, as_of, thresholds, risk, judged)
            if records:
                changed.append((state, records))
    changed.sort(key=lambda pair: pair[0].row)
    return changed


def churn_rates(model: ChurnModel, t: WarningThresholds, columns: FeatureColumns) -> Matrix:
    """The churn rate each customer's churn-risk entry is measured from: the book's
    (the model's training rows'), or with ``churn_risk.relative_to: rhythm`` that of
    its training rows of the customer's rhythm (the book's where a rhythm had too
    few rows to say)."""
    n = len(columns["orders_52w"])
    book = np.nan if model.book_churn_rate is None else model.book_churn_rate
    if t.churn_risk.relative_to == "book" or model.rhythm_churn_rates is None:
        return np.full(n, book)
    by_rhythm = np.array([book if r is None else r for r in model.rhythm_churn_rates])
    return np.asarray(by_rhythm[rhythm_groups(columns["orders_52w"])], dtype=float)


@dataclass(slots=True)  # not frozen: one is made per event, and frozen is slower to make
class Taken(Generic[T]):
    """What became of one event an :class:`Evaluator` was given (read-only)."""

    item: T
    #: The customer's state after it (None: not applied, see ``duplicate``,
    #: ``refused`` and ``error``).
    state: CustomerState | None
    late: bool = False
    #: Seen before: the customer's state holds it already (or ``skip`` said so).
    duplicate: bool = False
    #: Refused as a possible copy of an older event: why.
    refused: str = ""
    #: Applying it failed (only when the run tolerates errors).
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """What :meth:`Evaluator.run` did: each event's fate, in order, and the sweeps'
    warnings (``failed_sweeps``: boundaries whose sweep raised, when tolerated)."""

    taken: list[Taken[T]]
    records: list[WarningRecord]
    swept: list[float]
    failed_sweeps: list[tuple[float, Exception]]


class Evaluator(Generic[T]):
    """One partition's customers and the steps that change them: the step
    interpreter of the worker (each :class:`~pipeline.partition_task.PartitionTask`
    holds one) and of a batch run over history (:func:`run_history`).

    A :class:`~pipeline.ordering.Sequencer` turns events and the clock into
    steps; :meth:`run` applies each event to its customer's state and runs each
    sweep at its boundary with the model ``model_at(boundary)`` serves
    (``before_sweep(boundary, block)`` sees the states first), and returns what
    it did (:class:`Done`). The rows that changed (``changed``) are kept until
    the owner stores them. Items are events unless ``event_of`` says how to get
    one from an item.
    """

    def __init__(
        self,
        thresholds: WarningThresholds,
        model_at: Callable[[float], ChurnModel | None] | None = None,
        batch_size: int = 512,
        top_reasons: int = 3,
        before_sweep: Callable[[float, StateBlock], None] | None = None,
        event_of: Callable[[T], CustomerEvent] | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.block = StateBlock()
        self.model_at = model_at or (lambda _boundary: None)
        self.batch_size = batch_size
        self.top_reasons = top_reasons
        self.before_sweep = before_sweep
        self.event_of: Callable[[T], CustomerEvent] = event_of or (
            lambda item: cast(CustomerEvent, item)
        )
        self.changed: set[int] = set()
        #: (sweep boundary, row, score before, score now) of each customer whose
        #: health entered another band; None: not followed (a batch run)
        self.band_changes: list[tuple[float, int, int, int]] | None = None

    def run(
        self,
        steps: Iterable[Apply[T] | Sweep],
        *,
        skip: Callable[[T], bool] | None = None,
        sweep_skip: Callable[[float], npt.NDArray[np.bool_] | None] | None = None,
        observe: Callable[[Matrix, Matrix], None] | None = None,
        tolerate_errors: bool = False,
    ) -> Done[T]:
        """Take the steps in order and say what came of them.

        ``skip(item)``: the item is known to be applied already (a duplicate);
        ``sweep_skip(boundary)``: the rows a sweep leaves alone; ``observe``
        sees every scored batch of a sweep. With ``tolerate_errors`` an event or
        a sweep that raises is reported in the result instead (a stream must
        never stop on one message)."""
        done: Done[T] = Done([], [], [], [])
        for step in steps:
            if isinstance(step, Sweep):
                skipped = sweep_skip(step.boundary) if sweep_skip is not None else None
                try:
                    done.records.extend(self.sweep(step.boundary, skipped, observe))
                except Exception as exc:
                    if not tolerate_errors:
                        raise
                    done.failed_sweeps.append((step.boundary, exc))
                done.swept.append(step.boundary)
                continue
            item = step.item
            if skip is not None and skip(item):
                done.taken.append(Taken(item, None, step.late, duplicate=True))
                continue
            try:
                done.taken.append(self.apply(item, step.late))
            except Exception as exc:
                if not tolerate_errors:
                    raise
                done.taken.append(Taken(item, None, step.late, error=exc))
        return done

    def apply(self, item: T, late: bool = False) -> Taken[T]:
        """Fold the item's event into its customer's state."""
        event = self.event_of(item)
        state = self.block.state(event.customer_id)
        try:
            if not apply_event(state, event):
                return Taken(item, None, late, duplicate=True)
        except PossibleCopy as exc:
            return Taken(item, None, late, refused=str(exc))
        if late:
            state.late_events += 1
        self.changed.add(state.row)
        return Taken(item, state, late)

    def sweep(
        self,
        boundary: float,
        skip: npt.NDArray[np.bool_] | None = None,
        observe: Callable[[Matrix, Matrix], None] | None = None,
    ) -> list[WarningRecord]:
        """Re-evaluate every customer (but ``skip``) as of ``boundary`` (see :func:`sweep`)."""
        if self.before_sweep is not None:
            self.before_sweep(boundary, self.block)
        model = self.model_at(boundary)
        crossed: list[tuple[int, int, int]] | None = None if self.band_changes is None else []
        changed = sweep(
            self.block,
            boundary,
            self.thresholds,
            model,
            self.batch_size,
            self.top_reasons,
            observe,
            skip,
            self.changed,
            crossed,
        )
        if self.band_changes is not None and crossed:
            self.band_changes += [(boundary, *c) for c in crossed]
        records: list[WarningRecord] = []
        for state, made in changed:
            self.changed.add(state.row)
            records += made
        return records


def run_history(
    events: Iterable[CustomerEvent],
    thresholds: WarningThresholds,
    every_seconds: float,
    lateness_seconds: float = 0.0,
    model_at: Callable[[float], ChurnModel | None] | None = None,
    batch_size: int = 4096,
    before_sweep: Callable[[float, StateBlock], None] | None = None,
) -> tuple[StateBlock, list[WarningRecord]]:
    """The worker's logic over a whole history in one process.

    The same :class:`Evaluator` and :class:`~pipeline.ordering.Sequencer` decide
    when each event is applied and when each sweep runs, with the newest event
    time seen as the watermark, so a history in event-time order gives exactly
    the stream's warnings. ``model_at(boundary)`` is the churn model serving at
    a sweep (None: rules only), so a backtest can swap models as a retrained
    worker would. Scores do not depend on the batch size; a large one just means
    fewer calls. ``before_sweep(boundary, states)`` sees the states of each sweep
    before it runs (every event before the boundary applied, none after).
    """
    evaluator: Evaluator[CustomerEvent] = Evaluator(
        thresholds, model_at, batch_size, before_sweep=before_sweep
    )
    sequencer: Sequencer[CustomerEvent] = Sequencer(every_seconds, lateness_seconds)
    records: list[WarningRecord] = []
    watermark = 0.0
    for event in events:
        event_ts = event.epoch
        watermark = max(watermark, event_ts)
        records += evaluator.run(sequencer.offer(0, event_ts, event, watermark)).records
    records += evaluator.run(sequencer.drain(0)).records
    return evaluator.block, records
