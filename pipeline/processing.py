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
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from churnwatch.core.settings import WarningThresholds
from pipeline.apply import apply_event
from pipeline.events import CustomerEvent, WarningRecord
from pipeline.features import FeatureColumns, features_of, read_many
from pipeline.rules import Risk, changing, evaluate
from pipeline.scoring import ChurnModel, Matrix, feature_matrix
from pipeline.state import CustomerState, StateBlock

T = TypeVar("T")


def due_sweeps(last_sweep: float, watermark: float, every_seconds: float) -> list[float]:
    """Sweep times (multiples of ``every_seconds``) in ``(last_sweep, watermark]``.

    With ``last_sweep`` 0 (never swept) only the latest boundary is due, so a
    worker starting on old data does not sweep its whole history at once.
    """
    latest = math.floor(watermark / every_seconds) * every_seconds
    if latest <= last_sweep:
        return []
    if last_sweep <= 0:
        return [latest]
    first = math.floor(last_sweep / every_seconds) * every_seconds + every_seconds
    count = int(round((latest - first) / every_seconds)) + 1
    return [first + i * every_seconds for i in range(count)]


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
    decided = [
        changing(columns, t, data["episode_severity"][rows], scores[g] if scores else None)
        for g, (rows, t, columns) in enumerate(groups)
    ]
    # The reasons of every churn-risk warning that opens or worsens, in one call.
    reasons: dict[tuple[int, int], str] = {}
    speaking = [
        (g, int(i)) for g, (_, speaks) in enumerate(decided) for i in np.flatnonzero(speaks)
    ]
    if model is not None and speaking:
        texts = model.explain_many(
            np.array([matrices[g][i] for g, i in speaking]),
            [groups[g][1].language for g, _ in speaking],
            top_reasons,
        )
        reasons = dict(zip(speaking, texts, strict=True))
    changed: list[tuple[CustomerState, list[WarningRecord]]] = []
    for g, ((rows, t, columns), (change, _)) in enumerate(zip(groups, decided, strict=True)):
        for i in np.flatnonzero(change).tolist():
            state = CustomerState(block, int(rows[i]))
            risk = None
            if model is not None:
                row = matrices[g][i]
                explain = (
                    functools.partial(str, reasons[(g, i)])
                    if (g, i) in reasons
                    else functools.partial(model.explain, row, t.language, top_reasons)
                )
                risk = Risk(float(scores[g][i]), model.version, model.horizon_days, explain)
            records = evaluate(state, as_of, thresholds, features_of(columns, i), risk)
            if records:
                changed.append((state, records))
    changed.sort(key=lambda pair: pair[0].row)
    return changed


class Watermark:
    """Event-time watermark of each partition, across several input topics.

    Topics are read at different speeds, so the newest event time of one topic
    says nothing about events still unread on another. The watermark of a
    partition is therefore the oldest "newest event time" among its topics that
    still have unread messages (their unread events can only be newer, since
    each topic partition is in event-time order); when nothing is unread, it is
    the newest event time seen. It never goes back.
    """

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = tuple(topics)
        self.latest: dict[tuple[str, int], float] = {}
        self.offset: dict[tuple[str, int], int] = {}
        self.value: dict[int, float] = {}

    def reset(self) -> None:
        """Forget everything (after a rebalance: partitions may have moved)."""
        self.latest.clear()
        self.offset.clear()
        self.value.clear()

    def observe(
        self, topic: str, partition: int, offset: int, event_time: float | None = None
    ) -> None:
        """Record a consumed message (``event_time`` None: unusable, but read)."""
        key = (topic, partition)
        self.offset[key] = max(offset, self.offset.get(key, -1))
        if event_time is not None:
            self.latest[key] = max(event_time, self.latest.get(key, event_time))

    def start(self, topic: str, partition: int, next_offset: int) -> None:
        """Reading of the topic partition starts at ``next_offset`` (after a restart or a
        rebalance: the committed offset). Nothing before it counts as unread, so a
        partition with nothing new since does not hold the watermark back."""
        key = (topic, partition)
        self.offset[key] = max(self.offset.get(key, -1), next_offset - 1)

    def describe(self, partition: int, highwater: Callable[[str, int], int | None]) -> str:
        """Where each topic of the partition stands (for a log line when the clock waits)."""
        parts = []
        for topic in self.topics:
            key = (topic, partition)
            latest = self.latest.get(key)
            seen = "nothing" if latest is None else f"{latest:.0f}"
            parts.append(
                f"{topic}[{partition}] read to {self.offset.get(key, -1)} of end "
                f"{highwater(topic, partition)}, newest event time {seen}"
            )
        return "; ".join(parts)

    def advance(self, partition: int, highwater: Callable[[str, int], int | None]) -> float:
        """Recompute the partition's watermark.

        ``highwater(topic, partition)`` is the offset after the last message of
        that topic partition, or None while unknown.
        """
        lagging: list[float] = []
        seen: list[float] = []
        for topic in self.topics:
            key = (topic, partition)
            end = highwater(topic, partition)
            # An unknown end (no fetch answered yet) may hide older events.
            unread = end is None or self.offset.get(key, -1) + 1 < end
            if key in self.latest:
                seen.append(self.latest[key])
                if unread:
                    lagging.append(self.latest[key])
            elif unread:
                return self.value.get(partition, 0.0)  # nothing known yet about its events
        if seen:
            candidate = min(lagging) if lagging else max(seen)
            self.value[partition] = max(self.value.get(partition, 0.0), candidate)
        return self.value.get(partition, 0.0)


class ReadAhead:
    """Which topic partitions to stop fetching, so the events waiting stay few.

    Events wait in the reorder buffer while one topic is read ahead of the
    others in event time (a small topic can be read to its end in one fetch);
    on a long history that held half of it at once. Once more than ``limit``
    events of a partition wait, its topics that are ahead of the watermark
    are paused, each until the watermark has caught up with the newest event
    read from it. The topic the watermark waits for is never paused (its
    newest event is the watermark), so the clock always moves, and at most
    ``limit`` events plus one fetch wait per partition. Nothing is dropped or
    read twice: a paused topic partition is fetched on from where it stopped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused: set[tuple[str, int]] = set()

    def update(
        self, partition: int, waiting: int, watermark: Watermark
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The topic partitions of ``partition`` to pause now, and those to resume."""
        # Until every topic has given an event the watermark is not known, and
        # the topics that have are all ahead of it.
        now = watermark.value.get(partition, -math.inf)
        # A paused topic is read again once the clock has caught up with it (its
        # events have all been released then).
        resume = [
            key
            for key in self.paused
            if key[1] == partition and watermark.latest.get(key, now) <= now
        ]
        pause = []
        if waiting > self.limit:
            pause = [
                (topic, partition)
                for topic in watermark.topics
                if watermark.latest.get((topic, partition), -math.inf) > now
                and (topic, partition) not in self.paused
            ]
        self.paused.difference_update(resume)
        self.paused.update(pause)
        return pause, sorted(resume)

    def clear(self) -> None:
        """Forget the pauses (a rebalance: the consumer forgets them too)."""
        self.paused.clear()


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

    The same :class:`Sequencer` decides when each event is applied and when
    each sweep runs, with the newest event time seen as the watermark, so a
    history in event-time order gives exactly the stream's warnings.
    ``model_at(boundary)`` is the churn model serving at a sweep (None: rules
    only), so a backtest can swap models as a retrained worker would. Scores
    do not depend on the batch size; a large one just means fewer calls.
    ``before_sweep(boundary, states)`` sees the states of each sweep before it
    runs (every event before the boundary applied, none after).
    """
    states = StateBlock()
    records: list[WarningRecord] = []
    sequencer: Sequencer[CustomerEvent] = Sequencer(every_seconds, lateness_seconds)
    watermark = 0.0

    def run(steps: list[Apply[CustomerEvent] | Sweep]) -> None:
        for step in steps:
            if isinstance(step, Sweep):
                if before_sweep is not None:
                    before_sweep(step.boundary, states)
                model = model_at(step.boundary) if model_at is not None else None
                swept = sweep(states, step.boundary, thresholds, model, batch_size)
                for _state, changed in swept:
                    records.extend(changed)
                continue
            event = step.item
            state = states.state(event.customer_id)
            if step.late:
                state.late_events += 1
            apply_event(state, event)

    for event in events:
        event_ts = event.epoch
        watermark = max(watermark, event_ts)
        run(sequencer.offer(0, event_ts, event, watermark))
    run(sequencer.drain(0))
    return states, records


@dataclass(frozen=True, slots=True)
class Apply(Generic[T]):
    """Apply this event now (``late``: a sweep has already passed its time)."""

    item: T
    late: bool = False


@dataclass(frozen=True, slots=True)
class Sweep:
    """Re-evaluate every customer of the partition as of ``boundary``."""

    boundary: float


class Sequencer(Generic[T]):
    """When each event of a partition is applied, and when its sweeps run.

    Events wait in a :class:`ReorderBuffer` until the clock (the watermark
    minus the allowed lateness) passes them; each sweep boundary the clock
    passes is swept after the events before it and before the ones after it.
    An event older than a sweep already run is late: applied at once (never
    dropped) and marked so it can be counted.
    """

    def __init__(self, every_seconds: float, lateness_seconds: float = 0.0) -> None:
        self.every = every_seconds
        self.lateness = lateness_seconds
        self.buffer: ReorderBuffer[T] = ReorderBuffer()
        self.last_sweep: dict[int, float] = {}

    def offer(
        self, partition: int, event_time: float, item: T, watermark: float | None = None
    ) -> list[Apply[T] | Sweep]:
        """Take an event; with a ``watermark``, also advance the clock to it."""
        steps: list[Apply[T] | Sweep] = []
        if event_time < self.last_sweep.get(partition, 0.0):
            steps.append(Apply(item, late=True))
        else:
            self.buffer.push(partition, event_time, item)
        return steps if watermark is None else steps + self.advance(partition, watermark)

    def advance(self, partition: int, watermark: float) -> list[Apply[T] | Sweep]:
        clock = watermark - self.lateness
        steps: list[Apply[T] | Sweep] = []
        for boundary in due_sweeps(self.last_sweep.get(partition, 0.0), clock, self.every):
            steps += [Apply(item) for item in self.buffer.release(partition, boundary)]
            steps.append(Sweep(boundary))
            self.last_sweep[partition] = boundary
        steps += [Apply(item) for item in self.buffer.release(partition, clock, inclusive=True)]
        return steps

    def drain(self, partition: int) -> list[Apply[T] | Sweep]:
        """Everything still held (end of a batch run)."""
        return [Apply(item) for item in self.buffer.release(partition, math.inf)]

    def holding(self) -> list[int]:
        """The partitions with events waiting."""
        return self.buffer.partitions()

    def clear(self) -> None:
        self.buffer.clear()
        self.last_sweep.clear()

    def __len__(self) -> int:
        return len(self.buffer)


class ReorderBuffer(Generic[T]):
    """Holds each partition's events until the watermark says none older can come.

    Topics are consumed at different speeds; applying an event from a topic
    that is read ahead would let a sweep see the future. Events wait here and
    are released in event-time order, so every sweep sees exactly the events
    before its boundary, as in a batch run.
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[float, int, T]]] = {}
        self._seq = itertools.count()

    def push(self, partition: int, event_time: float, item: T) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (event_time, next(self._seq), item))

    def release(self, partition: int, before: float, inclusive: bool = False) -> list[T]:
        """Pop the items older than ``before`` (or at it, if ``inclusive``), oldest first."""
        heap = self._heaps.get(partition, [])
        out: list[T] = []
        while heap and (heap[0][0] < before or (inclusive and heap[0][0] == before)):
            out.append(heapq.heappop(heap)[2])
        return out

    def held(self, partition: int) -> int:
        return len(self._heaps.get(partition, ()))

    def partitions(self) -> list[int]:
        return [partition for partition, heap in self._heaps.items() if heap]

    def clear(self) -> None:
        self._heaps.clear()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())
