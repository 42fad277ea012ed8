"""The worker's work for one partition it owns: :class:`PartitionTask`.

:mod:`pipeline.track_customers` makes one per partition when the partition's
first message arrives (or the wall clock's first tick) and drops it on a
rebalance; it hands each message to :meth:`PartitionTask.on_event`, tells it
when the clock may have moved (:meth:`PartitionTask.on_tick`: the end of a
fetch, an idle poll, the wall clock's timer) and when the partition goes
(:meth:`PartitionTask.on_revoked`), and takes what it did for the next store
(:meth:`PartitionTask.take_result`: an immutable :class:`FetchResult`). The
task itself does no I/O.

It holds, by composition, the same step interpreter as a batch run over
history (:class:`pipeline.processing.Evaluator`, which says what became of
every step it took), the :class:`~pipeline.ordering.Sequencer` that orders
the steps, the event-time :class:`~pipeline.ordering.Watermark` and the
read-ahead pauses, and the acks in offset order; around the interpreter it
adds what a stream needs: skipping what was stored before a crash, dead
letters, and metrics.

``event`` clock (replay, simulation): the partition's event-time watermark
across all input topics. Events wait in the reorder buffer until the watermark
passes them, so a sweep never sees an event from after its boundary, however
the topics interleave; a held event is acked only once applied and stored.
``wall`` clock (live): events apply at once, and the worker's timer
(:meth:`pipeline.track_customers.TrackCustomers.wall_tick`) wakes the sweeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from faust.types import Message

from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS, Topic
from churnwatch.pipeline import metrics
from churnwatch.pipeline.events import (
    TOPIC_OF_TYPE,
    AccountChange,
    CustomerEvent,
    InvalidEvent,
    WarningRecord,
    change_id,
    dead_letter_for,
    decode_message,
    encode_event,
)
from churnwatch.pipeline.health import band_of
from churnwatch.pipeline.ordering import (
    Apply,
    InOrderAcks,
    ReadAhead,
    Sequencer,
    Stall,
    Sweep,
    Watermark,
    due_sweeps,
)
from churnwatch.pipeline.processing import Done, Evaluator
from churnwatch.pipeline.progress import Outgoing, PartitionProgress, holds, stamp
from churnwatch.pipeline.scoring import INPUT_FEATURES, ChurnModel, Matrix, ModelHolder
from churnwatch.pipeline.state import CustomerState, to_epoch
from churnwatch.pipeline.state_format import decode_state, encode_state

log = logging.getLogger(__name__)

REVENUE = INPUT_FEATURES.index("revenue_52w")
#: How long a partition's events may wait, unchanged, in a quiet stream before a
#: warning says what the event clock waits for.
WAITING_REPORT_SECONDS = 30.0

#: An event waiting to be applied: decoded, and the message to ack after.
Held = tuple[CustomerEvent, Message]


@dataclass(frozen=True)
class Wiring:
    """What every partition's agent of one worker shares."""

    settings: Settings
    models: ModelHolder
    #: ``highwater(topic, partition)``: the offset after the partition's last
    #: message as the batch in hand found it (None: not known yet).
    highwater: Callable[[str, int], int | None]
    #: ``scored(partition, model, rows, expected_loss)`` after a sweep scored customers.
    scored: Callable[[int, ChurnModel, list[Matrix], float], None]
    #: The clock that times a topic read to its end (``clock.idle_topic_wait_seconds``).
    clock: Callable[[], float] = time.monotonic

    @property
    def event_clock(self) -> bool:
        return self.settings.clock.mode == "event"

    @property
    def input_names(self) -> list[str]:
        return [self.settings.topic(t) for t in EVENT_TOPICS]


def _event_of(item: Held) -> CustomerEvent:
    return item[0]


@dataclass(frozen=True)
class FetchResult:
    """What a partition's task did since the last store, for the store to write:
    the warnings and dead letters to send, the customers changed (encoded for the
    state table), the last sweep boundary run (event clock) and the messages that
    may now be acked (in offset order)."""

    partition: int
    outgoing: tuple[Outgoing, ...]
    states: tuple[tuple[str, bytes], ...]
    swept: float | None
    ackable: tuple[Message, ...]


class PartitionTask:
    """One partition's customers, as its messages come (see the module docstring).

    ``stored`` are the partition's customer records in the state table and
    ``progress`` the ``sweep_progress`` table (:mod:`pipeline.progress`).
    """

    def __init__(
        self, partition: int, wiring: Wiring, stored: Iterable[bytes], progress: Any
    ) -> None:
        settings = wiring.settings
        self.evaluator: Evaluator[Held] = Evaluator(
            settings.warnings,
            lambda _boundary: wiring.models.model,
            settings.model.batch_size,
            settings.model.top_reasons,
            before_sweep=self._sweep_starts,
            event_of=_event_of,
        )
        self.evaluator.band_changes = []  # the account feed's band changes (health topic)
        self.sequencer: Sequencer[Held] = Sequencer(
            settings.clock.sweep_every_hours * 3600, settings.clock.allowed_lateness_hours * 3600
        )
        self.partition = partition
        self.wiring = wiring
        self.progress = PartitionProgress(progress, partition)
        self.event_clock = wiring.event_clock
        self.input_names = wiring.input_names
        self.input_index = {name: i for i, name in enumerate(self.input_names)}
        self.topic_names = {settings.topic(t): t for t in Topic}
        for value in stored:
            decode_state(value, self.evaluator.block)
        self.watermark = Watermark(self.input_names, settings.clock.idle_topic_wait_seconds)
        self.read_ahead = ReadAhead(settings.worker.max_waiting_events)
        self.acks: InOrderAcks[Message] = InOrderAcks()
        #: The warnings, dead letters and account changes made since the last store,
        #: to send with it.
        self.outgoing: list[Outgoing] = []
        # The customers the current sweep scored, and their expected loss (metrics).
        self._scored: list[Matrix] = []
        self._loss = 0.0
        #: The last sweep boundary run since the last store (stored with the states).
        self.swept: float | None = None
        #: The event clock (watermark minus lateness: every event read at or before
        #: it has been applied).
        self.clock = 0.0
        #: The highest offset read of each topic, and how far each topic's messages
        #: are applied and stored (the offset after the last one: below it, skipped).
        self.read_to: dict[str, int] = {}
        self.floors: dict[str, int] = {}
        self.last_message: Message | None = None
        self.newest = 0.0  # event time of the newest event applied
        self.received_at = time.time()  # when the messages in hand were produced
        self.due = False  # the clock moves at the end of the fetch
        self._resumed = False
        self._wall_last_sweep = 0.0
        self._stall = Stall(WAITING_REPORT_SECONDS)

    @property
    def block(self) -> Any:
        """The partition's customers' states (the interpreter's)."""
        return self.evaluator.block

    # -- the three things that happen to a partition ---------------------------

    def start(self, committed: Mapping[str, int | None]) -> None:
        """Reading starts: load the read floors and tell the watermark where reading
        starts, the ``committed`` offsets or the read floor where that is further
        (the events before it are applied and stored). Without it, a topic with
        nothing new since a restart or a rebalance would hold the clock for good."""
        self.floors = self.progress.read_floors(self.input_names)  # (the inputs' floors)
        if self.event_clock:
            for name, offset in committed.items():
                floor = self.floors.get(name)
                if offset is not None or floor is not None:
                    self.watermark.start(name, self.partition, max(offset or 0, floor or 0))

    def read_again(self, message: Message) -> bool:
        """Delivered again without a rebalance (Faust seeks back to the committed
        offsets when a table recovery ends): the first copy is in hand, held or
        finished."""
        return message.offset <= self.read_to.get(message.topic, -1)

    def on_event(self, message: Message, received_at: float) -> None:
        """Take one message of the partition (any input topic)."""
        self.received_at = received_at
        self.read_to[message.topic] = message.offset
        self.acks.received(message)
        self.last_message = message
        logical = self.topic_names.get(message.topic)
        if message.offset < self.floors.get(message.topic, 0):
            # Applied and stored before a stop, a crash or a rebalance that cut off
            # the commit: read again, skipped.
            metrics.EVENTS_DUPLICATE.inc()
            self._finish_unusable(message, advance=False)
            return
        try:
            decoded = self._decode(message, logical)
        except InvalidEvent as exc:
            self.dead_letter(message, str(exc), "invalid")
            self._finish_unusable(message, advance=True)
            return
        except Exception as exc:  # an agent must never die on one message
            log.exception(
                "could not process %s[%s]@%s", message.topic, self.partition, message.offset
            )
            self.dead_letter(message, f"processing error: {exc!r}", "processing_error")
            self.acks.finished(message)
            return
        if not self.event_clock:
            self._run([Apply((decoded, message))])
            return
        event_ts = decoded.epoch
        self.watermark.observe(message.topic, self.partition, message.offset, event_ts)
        self._resume()
        self._run(self.sequencer.offer(self.partition, event_ts, (decoded, message)))
        if self.sequencer.last_sweep.get(self.partition, 0.0) > 0:
            self.due = True
        else:  # the first sweep: at the first boundary the clock passes, as in a batch run
            self.on_tick(received_at)

    def on_tick(self, received_at: float) -> None:
        """The clock may have moved. Event clock: to the watermark, releasing the
        events before it and running the sweeps due. Once per fetch (every boundary
        since the last sweep is due then), but after every message until the
        partition's first sweep, as a batch run does after every event: the first
        sweep of a worker starting on old data is the boundary just passed. Wall
        clock: the sweeps due by now."""
        self.received_at = received_at
        self.due = False
        if not self.event_clock:
            due = due_sweeps(self._wall_last_sweep, time.time(), self.sequencer.every)
            self._run([Sweep(boundary) for boundary in due])
            if due:
                self._wall_last_sweep = due[-1]
            return
        now = self.watermark.advance(self.partition, self.wiring.highwater, self.wiring.clock())
        self._resume()
        steps = self.sequencer.advance(self.partition, now)
        self.clock = max(self.clock, now - self.sequencer.lateness)
        self._run(steps)

    def on_revoked(self) -> None:
        """The partition goes (a rebalance): the events held are dropped unacked, so
        the partition's next owner reads them again from the committed offsets."""
        if len(self.sequencer):
            log.info(
                "partition %s revoked: %s held events left to its next owner",
                self.partition,
                len(self.sequencer),
            )
        self.sequencer.clear()
        self.read_ahead.clear()

    # -- the step interpreter, with the stream's bookkeeping ----------------------

    def _run(self, steps: list[Apply[Held] | Sweep]) -> None:
        """Take the steps, then do what a stream does with what came of them."""
        if not steps:
            return  # (most events wait in the reorder buffer: nothing to take yet)
        done = self.evaluator.run(
            steps,
            skip=self._stored_already,
            sweep_skip=self._stored_after,
            observe=self._observed,
            tolerate_errors=True,  # an agent must never die on one message, or one sweep
        )
        self._events_taken(done)
        self._sweeps_run(done)

    def _events_taken(self, done: Done[Held]) -> None:
        for taken in done.taken:
            decoded, message = taken.item
            if taken.error is not None:
                log.error("could not apply %s", decoded.event_id, exc_info=taken.error)
                self.dead_letter(message, f"processing error: {taken.error!r}", "processing_error")
            elif taken.duplicate:  # seen before (redelivered after a restart, or sent twice)
                metrics.EVENTS_DUPLICATE.inc()
            else:
                if taken.refused:
                    self.dead_letter(message, taken.refused, "possible_copy")
                self.newest = max(self.newest, decoded.epoch)
                if taken.late:
                    metrics.LATE_EVENTS.inc()
                    log.warning(
                        "late event %s for %s at %s: applied after its sweep",
                        decoded.event_id,
                        decoded.customer_id,
                        decoded.occurred_at.isoformat(),
                    )
            self.acks.finished(message)

    def _sweeps_run(self, done: Done[Held]) -> None:
        for boundary, exc in done.failed_sweeps:  # one bad sweep must not stop the partition
            log.error("sweep of partition %s at %s failed", self.partition, boundary, exc_info=exc)
        if not done.swept:
            return
        if self.event_clock:
            self.swept = done.swept[-1]  # stored with the states it made
        metrics.SWEEPS.labels(self.wiring.settings.clock.mode).inc(len(done.swept))
        self._emit(done.records)
        self._emit_bands()
        model = self.evaluator.model_at(done.swept[-1])
        if model is not None and self._scored:
            self.wiring.scored(self.partition, model, self._scored, self._loss)

    def _sweep_starts(self, boundary: float, block: Any) -> None:
        self._scored, self._loss = [], 0.0

    def _observed(self, rows: Matrix, probabilities: Matrix) -> None:
        self._scored.append(rows)
        self._loss += float(np.dot(probabilities, np.nan_to_num(rows[:, REVENUE])))
        metrics.observe_many(metrics.CHURN_SCORE, probabilities)

    def _stored_after(self, boundary: float) -> npt.NDArray[np.bool_]:
        """The customers stored after this sweep (a crash cut off the rest of their batch)."""
        stored: npt.NDArray[np.bool_] = self.block.used()["stream_sweep"] >= boundary
        return stored

    # -- what the next store takes ---------------------------------------------

    def take_result(self) -> FetchResult:
        """What the task did since the last store (and forget it: the store writes it)."""
        swept, self.swept = self.swept, None
        outgoing, self.outgoing = self.outgoing, []
        return FetchResult(
            self.partition,
            tuple(outgoing),
            tuple(self._take_changes()),
            swept,
            tuple(self.acks.ackable()),
        )

    def _take_changes(self) -> list[tuple[str, bytes]]:
        """The customers changed since the last store, encoded for the state table,
        each stamped with where the stream stands (see ``_stored_already``)."""
        rows, self.evaluator.changed = self.evaluator.changed, set()
        stamp(
            self.block,
            rows,
            self.sequencer.last_sweep.get(self.partition, 0.0),
            self.clock if self.event_clock else np.inf,
            [self.read_to.get(name, -1) for name in self.input_names],
        )
        ids = self.block.customer_ids
        return [
            (ids[row], encode_state(CustomerState(self.block, row), self.partition)) for row in rows
        ]

    def dead_letter(self, message: Message, reason: str, kind: str) -> None:
        record = dead_letter_for(
            message.topic, message.partition, message.offset, message.key, message.value, reason
        )
        metrics.INVALID_EVENTS.labels(kind).inc()
        metrics.DEAD_LETTERS.inc()
        self.outgoing.append((Topic.DEAD_LETTERS, message.key, encode_event(record)))

    # -- the read-ahead pauses and the log line when the clock waits -----------

    def pace(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The topic partitions to pause and to resume (see ReadAhead)."""
        held = self.sequencer.buffer.held(self.partition)
        return self.read_ahead.update(self.partition, held, self.watermark)

    def holding(self) -> bool:
        return bool(self.sequencer.buffer.held(self.partition))

    def report_waiting(self, now: float) -> None:
        """Say so when events wait with no input coming: the clock waits for a topic
        partition that is not being read."""
        count = self.sequencer.buffer.held(self.partition)
        waited = self._stall.check(count, now)
        if waited is not None:
            log.warning(
                "partition %s: %s events waiting for %.0f s with no input coming; "
                "last sweep %s, clock %s; %s",
                self.partition,
                count,
                waited,
                self.sequencer.last_sweep.get(self.partition),
                self.clock,
                self.watermark.describe(self.partition, self.wiring.highwater),
            )

    # -- inside ----------------------------------------------------------------

    def _finish_unusable(self, message: Message, advance: bool) -> None:
        self.acks.finished(message)
        if self.event_clock:
            self.watermark.observe(message.topic, self.partition, message.offset)
            if advance:
                self.on_tick(self.received_at)

    def _decode(self, message: Message, logical: Topic | None) -> CustomerEvent:
        decoded = decode_message(message.value, message.key)
        expected = TOPIC_OF_TYPE[decoded.type]
        if logical is not None and logical is not expected:
            raise InvalidEvent(
                f"a {decoded.type} event belongs on "
                f"{self.wiring.settings.topic(expected)}, not {message.topic}"
            )
        return decoded

    def _stored_already(self, item: Held) -> bool:
        """Whether the customer's stored record holds this event already (after a
        crash a record can be newer than its partition's read floors and commits)."""
        decoded, message = item
        topic = self.input_index.get(message.topic)
        return topic is not None and holds(
            self.block, decoded.customer_id, decoded.epoch, topic, message.offset
        )

    def _resume(self) -> None:
        """Continue the sweeps where they stopped (before a restart or rebalance)."""
        if not self._resumed:
            done_until = self.progress.last_sweep()
            last = self.sequencer.last_sweep
            last[self.partition] = max(last.get(self.partition, 0.0), done_until)
            self._resumed = True

    def _emit_bands(self) -> None:
        """The customers whose health entered another band in the sweeps, onto the
        health topic (a sweep run again after a crash gives the same change ids)."""
        changes = self.evaluator.band_changes
        if not changes:
            return
        block = self.evaluator.block
        for boundary, row, before, now in changes:
            state = CustomerState(block, row)
            record = AccountChange(
                change_id=change_id(state.customer_id, "band", boundary, before, now),
                change="band_changed",
                customer_id=state.customer_id,
                customer_name=state.name,
                owner=state.owner,
                segment=state.segment,
                at=datetime.fromtimestamp(boundary, UTC),
                health=now,
                band=band_of(now),
                previous_band=band_of(before),
            )
            self.outgoing.append((Topic.HEALTH, state.customer_id.encode(), encode_event(record)))
        changes.clear()

    def _emit(self, records: list[WarningRecord]) -> None:
        now = time.time()
        for record in records:
            metrics.WARNINGS.labels(record.warning_type, record.status, record.severity).inc()
            key = record.customer_id.encode()
            self.outgoing.append((Topic.WARNINGS, key, encode_event(record)))
            metrics.WARNING_LATENCY.labels("event_time").observe(
                max(0.0, now - to_epoch(record.at))
            )
            metrics.WARNING_LATENCY.labels("ingest").observe(max(0.0, now - self.received_at))
