"""``track_customers``: keeps each customer's state and raises warnings.

A thin loop over batches of messages, one batch per fetch
(:func:`pipeline.transport.on_batches`, below Faust's per-message streams):
decode and validate each (anything unusable goes to the dead-letter topic
with the reason), fold the events into the customers' states with
:func:`pipeline.apply.apply_event`, and
whenever the clock passes a sweep boundary re-evaluate every customer of the
partition (:func:`pipeline.processing.sweep`) and send the warning episodes
that open, worsen or close. At the end of a batch each customer it touched is
written to the state table once, and only then are the batch's messages acked,
so a crash loses nothing and a redelivered event is recognised and skipped.

A batch is what one fetch returned: at most ``worker.batch_size`` messages,
fewer when that is all there was, so a quiet stream is never held back
waiting for a full batch.

``event`` clock (replay, simulation): the partition's event-time watermark
across all input topics. Events wait in a reorder buffer until the watermark
passes them, so a sweep never sees an event from after its boundary, however
the topics interleave; a held event is acked only once applied and stored.
``wall`` clock (live): events apply at once and ticks from
:mod:`pipeline.sweep_clock` wake the sweeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, Message
from kafka import TopicPartition

from churnwatch.core.settings import FAULT_EXIT_ENV
from churnwatch.core.topics import EVENT_TOPICS, Topic, committed_offsets
from pipeline import metrics
from pipeline.app import Pipeline
from pipeline.apply import apply_event
from pipeline.events import (
    TOPIC_OF_TYPE,
    WARNING_TYPES,
    CustomerEvent,
    InvalidEvent,
    WarningRecord,
    dead_letter_for,
    decode_message,
    encode_event,
)
from pipeline.processing import (
    Apply,
    ReadAhead,
    Sequencer,
    Sweep,
    Watermark,
    due_sweeps,
    sweep,
)
from pipeline.scoring import INPUT_FEATURES, ModelHolder
from pipeline.state import CustomerState, StateBlock, to_epoch
from pipeline.state_format import decode_state, encode_state, stored_partition
from pipeline.transport import InOrderAcks, on_batches, storing_for

log = logging.getLogger(__name__)

REVENUE = INPUT_FEATURES.index("revenue_52w")
#: How often the feature-drift gauges are recomputed from the last sweeps' rows.
DRIFT_EVERY_SECONDS = 10.0
#: How long a partition's events may wait, unchanged, in a quiet stream before a
#: warning says what the event clock waits for.
WAITING_REPORT_SECONDS = 30.0

#: An event waiting to be applied: decoded, and the message to ack after.
Held = tuple[CustomerEvent, Message]


def read_floor_key(topic: str, partition: int) -> str:
    """The key in the ``sweep_progress`` table of a topic partition's read floor."""
    return f"read:{topic}:{partition}"


def unsent_key(partition: int) -> str:
    """The local-only key (never on the changelog) in the ``sweep_progress`` table of
    the customers of a partition whose changes were being sent when last stored."""
    return f"unsent:{partition}"


def unsent_records_key(partition: int) -> str:
    """The local-only key of the warnings and dead letters a partition's last stored
    batch sent (the local store holds their effects before they are delivered)."""
    return f"unsent-records:{partition}"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def register(p: Pipeline) -> None:
    """Attach the agent to the app."""
    settings = p.settings
    thresholds = settings.warnings
    every = settings.clock.sweep_every_hours * 3600
    event_clock = settings.clock.mode == "event"
    topic_names = {settings.topic(t): t for t in Topic}
    input_names = [settings.topic(t) for t in EVENT_TOPICS]
    input_index = {name: i for i, name in enumerate(input_names)}
    lateness = settings.clock.allowed_lateness_hours * 3600
    floor_topics = [*input_names, settings.topic(Topic.TICKS)]
    watermark = Watermark(input_names)
    sequencer: Sequencer[Held] = Sequencer(every, lateness)
    read_ahead = ReadAhead(settings.worker.max_waiting_events)
    wall_last_sweep: dict[int, float] = {}
    models = ModelHolder(Path(settings.model.registry))

    # The customers each partition's last sweep scored: the live population
    # whose drift against the training rows the metrics report.
    scored: dict[int, list[Any]] = {}
    drift_due = [0.0]  # when the drift gauges are next recomputed (monotonic clock)
    expected_loss: dict[int, float] = {}

    published: list[str] = []

    def refresh_model() -> None:
        refused = models.refused
        model = models.refresh()
        if models.refused is not None and models.refused != refused:
            metrics.MODEL_REFUSED.inc()
        version = model.version if model else "none"
        if published[-1:] != [version]:
            metrics.MODEL.info({"version": version})
            metrics.MODEL_CREATED.clear()
            metrics.EXPECTED_LOSS.clear()
            expected_loss.clear()
            if model is not None and model.created_at:
                metrics.MODEL_CREATED.labels(version).set(model.created_at)
            published.append(version)

    refresh_model()  # before the first sweep: a promoted model serves from the start

    @p.app.timer(interval=settings.model.reload_seconds, name="follow_promoted_model")  # type: ignore[untyped-decorator]
    async def follow_promoted_model() -> None:
        refresh_model()

    # Each topic partition's end as the batch in hand found it (asked once per
    # batch: the consumer's answer crosses to its thread).
    ends: dict[tuple[str, int], int | None] = {}

    def highwater(topic: str, partition: int) -> int | None:
        key = (topic, partition)
        if key in ends:
            return ends[key]
        try:
            end = p.app.consumer.highwater(TP(topic, partition))
        except ConsumerNotStarted:
            end = None  # no fetch yet: nothing is known to be unread
        ends[key] = int(end) if end is not None and end >= 0 else None
        return ends[key]

    # What each partition's batch sent to the output topics since its last store:
    # (topic, key, value). Noted locally with the store, so that a kill -9 after the
    # local writes but before the producer delivered them does not lose them.
    outgoing: dict[int, list[tuple[Topic, bytes | None, bytes]]] = {}

    async def send_out(partition: int, topic: Topic, key: bytes | None, value: bytes) -> None:
        outgoing.setdefault(partition, []).append((topic, key, value))
        channel = p.warnings if topic is Topic.WARNINGS else p.dead_letters
        await channel.send(key=key, value=value)

    async def dead_letter(message: Message, reason: str, kind: str) -> None:
        record = dead_letter_for(
            message.topic, message.partition, message.offset, message.key, message.value, reason
        )
        metrics.INVALID_EVENTS.labels(kind).inc()
        metrics.DEAD_LETTERS.inc()
        await send_out(message.partition, Topic.DEAD_LETTERS, message.key, encode_event(record))

    async def emit(partition: int, records: list[WarningRecord], received_at: float) -> None:
        for record in records:
            metrics.WARNINGS.labels(record.warning_type, record.status, record.severity).inc()
            value = encode_event(record)
            await send_out(partition, Topic.WARNINGS, record.customer_id.encode(), value)
            now = time.time()
            metrics.WARNING_LATENCY.labels("event_time").observe(
                max(0.0, now - to_epoch(record.at))
            )
            metrics.WARNING_LATENCY.labels("ingest").observe(max(0.0, now - received_at))

    # The states of each partition this worker owns, read from the table on
    # first use. Forgotten on every rebalance, when another worker may have
    # changed what we held.
    blocks: dict[int, StateBlock] = {}
    # Rows changed since the table was last written, and the messages whose
    # effects they hold: acked once the rows are stored.
    dirty: dict[int, set[int]] = {}
    acks = InOrderAcks()
    # The last sweep boundary each partition ran since the table was last written.
    swept: dict[int, float] = {}
    # Each partition's event clock (watermark minus lateness: every event read at
    # or before it has been applied), the highest offset read of each topic
    # partition, and the newest message of each partition (to file its writes).
    clocks: dict[int, float] = {}
    read_to: dict[tuple[str, int], int] = {}
    last_message: dict[int, Message] = {}

    def partition_block(partition: int) -> StateBlock:
        block = blocks.get(partition)
        if block is None:
            block = blocks[partition] = StateBlock()
            for value in list(p.states.values()):
                if value is not None and stored_partition(value) == partition:
                    decode_state(value, block)
            metrics.CUSTOMERS_TRACKED.set(sum(len(b) for b in blocks.values()))
        return block

    # Held while a batch is processed: a rebalance waits for the batch in hand (never
    # for the events held in the reorder buffer, which it drops).
    busy = asyncio.Lock()

    @p.app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust stub too narrow
    async def forget_partitions(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # After a rebalance Faust re-seeks to the committed offsets, so events
        # still held in the buffer (never acked) are delivered again.
        async with busy:
            await sends_done()  # the last store's sends: let them finish first
            forget()

    @p.app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust stub too narrow
    async def finish_publishing(_app: Any, **kwargs: Any) -> None:
        # A stop: the last batch's sends, acks and commit go out before the producer closes.
        await sends_done()

    async def sends_done() -> None:
        """Until the stores' sends on their way are done (their errors are logged)."""
        if publishing:
            await asyncio.gather(*publishing, return_exceptions=True)

    def forget() -> None:
        blocks.clear()
        dirty.clear()
        acks.clear()
        swept.clear()
        scored.clear()
        expected_loss.clear()
        metrics.CUSTOMERS_TRACKED.set(0)
        resumed.clear()
        started.clear()
        floors.clear()
        wall_last_sweep.clear()
        watermark.reset()
        sequencer.clear()
        read_ahead.clear()
        outgoing.clear()
        waiting_since.clear()
        clocks.clear()
        read_to.clear()
        last_message.clear()

    newest = [0.0]  # event time of the newest event applied

    def stored_already(block: StateBlock, decoded: CustomerEvent, message: Message) -> bool:
        """Whether the customer's stored record holds this event already: it was
        read (offset at or below the highest read when the record was stored)
        and not waiting (at or before the clock then). After a crash a record
        can be newer than its partition's read floors and commits."""
        row = block.rows.get(decoded.customer_id)
        topic = input_index.get(message.topic)
        if row is None or topic is None:
            return False
        col = block.col
        return bool(
            decoded.epoch <= col["stream_clock"][row]
            and message.offset <= col["stream_offsets"][row, topic]
        )

    def stamp(block: StateBlock, rows: set[int], partition: int) -> None:
        """Record in each row where the stream stands (see ``stored_already``)."""
        at = np.fromiter(rows, np.intp, len(rows))
        data = block.data
        data["stream_sweep"][at] = np.maximum(
            data["stream_sweep"][at], sequencer.last_sweep.get(partition, 0.0)
        )
        clock = clocks.get(partition, 0.0) if event_clock else np.inf
        data["stream_clock"][at] = np.maximum(data["stream_clock"][at], clock)
        offsets = np.array([read_to.get((name, partition), -1) for name in input_names])
        data["stream_offsets"][at] = np.maximum(data["stream_offsets"][at], offsets)

    def apply(partition: int, decoded: CustomerEvent, message: Message, late: bool = False) -> None:
        block = partition_block(partition)
        if stored_already(block, decoded, message):
            metrics.EVENTS_DUPLICATE.inc()
            return
        known = len(block)
        state = block.state(decoded.customer_id)
        if len(block) > known:
            metrics.CUSTOMERS_TRACKED.inc()
        if not apply_event(state, decoded):
            # Seen before: redelivered after a restart, or sent twice.
            metrics.EVENTS_DUPLICATE.inc()
            return
        dirty.setdefault(partition, set()).add(state.row)
        newest[0] = max(newest[0], decoded.epoch)
        if late:
            state.late_events += 1
            metrics.LATE_EVENTS.inc()
            log.warning(
                "late event %s for %s at %s: applied after its sweep",
                decoded.event_id,
                decoded.customer_id,
                decoded.occurred_at.isoformat(),
            )

    async def sweep_at(
        partition: int, boundary: float, clock_name: str, received_at: float
    ) -> None:
        batches: list[Any] = []
        loss = [0.0]

        def observe(rows: Any, probabilities: Any) -> None:
            batches.append(rows)
            loss[0] += float(np.dot(probabilities, np.nan_to_num(rows[:, REVENUE])))
            metrics.observe_many(metrics.CHURN_SCORE, probabilities)

        model = models.model
        block = partition_block(partition)
        changed = sweep(
            block,
            boundary,
            thresholds,
            model,
            settings.model.batch_size,
            settings.model.top_reasons,
            observe,
            # customers stored after this sweep (a crash cut off the rest of their batch)
            skip=block.used()["stream_sweep"] >= boundary,
        )
        rows = dirty.setdefault(partition, set())
        for state, records in changed:
            rows.add(state.row)
            await emit(partition, records, received_at)
        metrics.SWEEPS.labels(clock_name).inc()
        if model is not None and batches:
            scored[partition] = batches
            expected_loss[partition] = loss[0]
            metrics.EXPECTED_LOSS.labels(model.version).set(sum(expected_loss.values()))
            if time.monotonic() >= drift_due[0]:  # a gauge scraped every few seconds
                drift_due[0] = time.monotonic() + DRIFT_EVERY_SECONDS
                population = np.vstack([rows for listed in scored.values() for rows in listed])
                for feature, value in model.feature_drift(population).items():
                    metrics.FEATURE_DRIFT.labels(feature).set(value)

    resumed: set[int] = set()

    def resume(partition: int) -> None:
        """Continue the partition's sweeps where they stopped (before a restart or rebalance)."""
        if partition not in resumed:
            done_until = p.sweep_progress.get(str(partition)) or 0.0
            sequencer.last_sweep[partition] = max(
                sequencer.last_sweep.get(partition, 0.0), done_until
            )
            resumed.add(partition)

    async def run(partition: int, steps: list[Apply[Held] | Sweep], received_at: float) -> None:
        for step in steps:
            if isinstance(step, Sweep):
                try:
                    await sweep_at(partition, step.boundary, "event", received_at)
                except Exception:  # one bad sweep must not stop the partition
                    log.exception("sweep of partition %s at %s failed", partition, step.boundary)
                swept[partition] = step.boundary  # stored with the states it made
                continue
            decoded, held = step.item
            try:
                apply(partition, decoded, held, late=step.late)
            except Exception as exc:  # an agent must never die on one message
                log.exception("could not apply %s", decoded.event_id)
                await dead_letter(held, f"processing error: {exc!r}", "processing_error")
            acks.finished(held)

    def decode(message: Message, logical: Topic | None) -> CustomerEvent:
        decoded = decode_message(message.value, message.key)
        expected = TOPIC_OF_TYPE[decoded.type]
        if logical is not None and logical is not expected:
            raise InvalidEvent(
                f"a {decoded.type} event belongs on {settings.topic(expected)}, not {message.topic}"
            )
        return decoded

    # The changelog writes of a store still on their way (see store()).
    publishing: set[asyncio.Future[None]] = set()

    async def store(last_of: dict[int, Message]) -> None:
        """Write every changed customer once, the sweeps that changed them and how far
        each input partition is applied; then send them (after the warnings), ack and
        commit the messages they cover, in a task the next store waits for.

        The local writes happen in one step with no pause in between, so a stop or
        a rebalance (which cancel the batch at its next pause) never leaves some
        customers stored past the sweep progress and others not; the changelog
        sends, flush and commit that follow are shielded from the cancel. With
        the read floors stored beside the states, a restart skips the messages
        whose effects were stored even when their commit was lost."""
        if publishing:
            # The previous batch's sends still on their way (they overlap this
            # batch's work): this batch's local writes and sends come after them.
            await asyncio.shield(asyncio.gather(*publishing))
        if p.app.rebalancing:
            # The partitions may be another worker's by now: store nothing, ack
            # nothing; the revoke that follows forgets this batch and the next
            # owner reads it again.
            return
        sends: list[tuple[Any, str, Any, int]] = []  # (table, key, value, partition)

        def put(table: Any, key: str, value: Any, partition: int) -> None:
            table.data[key] = value
            sends.append((table, key, value, partition))

        local: Any = p.sweep_progress.data
        noted: list[tuple[int, Message]] = []  # partitions whose sent records are noted
        records_noted = 0

        for partition, message in last_of.items():
            rows = dirty.get(partition, set())
            block = blocks.get(partition) if rows else None  # (rows mark a loaded block)
            with storing_for(p.app, message):  # keys filed under this partition
                if block is not None:
                    stamp(block, rows, partition)
                    for row in rows:
                        put(
                            p.states,
                            block.customer_ids[row],
                            encode_state(CustomerState(block, row), partition),
                            partition,
                        )
                    # Local only: a kill -9 before these reach the changelog leaves
                    # them in the local store alone, so a restart sends them again.
                    local[unsent_key(partition)] = json.dumps(
                        [block.customer_ids[row] for row in rows]
                    )
                if partition in swept:
                    put(p.sweep_progress, str(partition), swept.pop(partition), partition)
                # The same for the warnings and dead letters this batch sent (still in
                # the producer's buffer, maybe): local only, replaced by the next store.
                records = outgoing.pop(partition, [])
                if records or local.get(unsent_records_key(partition)) != "[]":
                    noted.append((partition, message))
                    records_noted += len(records)
                    local[unsent_records_key(partition)] = json.dumps(
                        [[topic.value, _b64(key), _b64(value)] for topic, key, value in records]
                    )
            rows.clear()
        for partition in resend_floors & set(last_of):
            resend_floors.discard(partition)
            with storing_for(p.app, last_of[partition]):
                for name in floor_topics:
                    if (name, partition) in floors:
                        key = read_floor_key(name, partition)
                        put(p.sweep_progress, key, float(floors[(name, partition)]), partition)
        ackable = acks.ackable()
        # the newest acked message of each topic partition (ackable is in offset order)
        last_acked = {message.tp: message for message in ackable}
        for tp, message in last_acked.items():
            with storing_for(p.app, message):
                put(
                    p.sweep_progress,
                    read_floor_key(tp.topic, tp.partition),
                    float(message.offset + 1),
                    tp.partition,
                )
        if exit_after[0] and records_noted:
            exit_after[0] -= 1
            if not exit_after[0]:
                os._exit(137)  # fault injection (FAULT_EXIT_ENV): the crash tests only
        if not sends and not ackable and not noted:
            return
        # Not awaited here: the next fetch is taken and worked on while these go
        # out (the next store waits for them first, a revoke and a stop too).
        task = asyncio.ensure_future(publish(sends, ackable, noted))
        publishing.add(task)
        task.add_done_callback(sent)

    def sent(task: asyncio.Future[None]) -> None:
        publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not send a batch's changes: %r", task.exception())

    async def publish(
        sends: list[tuple[Any, str, Any, int]],
        ackable: list[Message],
        noted: list[tuple[int, Message]],
    ) -> None:
        """On the broker in this order, each step waiting for the one before: the
        batch's warnings and dead letters, the customers' states, the partitions'
        sweep progress and read floors; then the acks and the commit. Without
        transactions a crash can cut this anywhere, so nothing lands ahead of
        what it vouches for: a stored episode's warning was sent, and a sweep
        progress or read floor never runs ahead of the states it covers (a state
        ahead of them is recognised by its own ``stream_*`` fields)."""
        producer = p.app.producer
        await producer.flush()
        local: Any = p.sweep_progress.data
        for partition, message in noted:  # delivered: nothing to send again after a crash
            with storing_for(p.app, message):
                local[unsent_records_key(partition)] = "[]"
        for step in (
            [send for send in sends if send[0] is p.states],
            [send for send in sends if send[0] is not p.states],
        ):
            for table, key, value, partition in step:
                # Straight to the producer: Faust's table buffer would hand over these
                # changes one by one, and its flush gives up after 0.1 s.
                await table.changelog_topic.send(
                    key=key,
                    value=value,
                    partition=partition,
                    key_serializer=table.key_serializer,
                    value_serializer=table.value_serializer,
                    callback=table._on_changelog_sent,  # records the offset the store holds
                    force=True,
                )
            if step:
                await producer.flush()
        if not ackable:
            return
        ack = p.app.consumer.ack
        for message in ackable:
            ack(message)
        await p.app.consumer.commit()

    async def advance(partition: int, received_at: float) -> None:
        """Move the partition's clock to its watermark: release events, run due sweeps.

        Once per fetch (every boundary since the last sweep is due then), but
        after every message until the partition's first sweep, as a batch run
        does after every event: the first sweep of a worker starting on old data
        is the boundary just passed.
        """
        now = watermark.advance(partition, highwater)
        resume(partition)
        steps = sequencer.advance(partition, now)
        clocks[partition] = max(clocks.get(partition, 0.0), now - lateness)
        await run(partition, steps, received_at)

    async def advance_waiting(last_of: dict[int, Message], received_at: float) -> None:
        """Advance the partitions with events waiting that the batch did not touch:
        a topic partition's end may have become known since (the last fetch of a
        taken-over partition can come before its other topics' ends are)."""
        for partition in sequencer.holding():
            if partition not in last_of and partition in started and partition in last_message:
                await advance(partition, received_at)
                last_of[partition] = last_message[partition]

    # Since when each partition's waiting events have not moved (for the log).
    waiting_since: dict[int, tuple[int, float]] = {}

    async def idle() -> None:
        """A fetch found nothing new: events may still wait for a clock that can move."""
        if not event_clock:
            return
        async with busy:
            ends.clear()
            last_of: dict[int, Message] = {}
            await advance_waiting(last_of, time.time())
            pace({partition for _, partition in read_ahead.paused})
            if last_of:
                await store(last_of)
            report_waiting()

    def report_waiting() -> None:
        """Say so when a partition's events wait with no input coming: the clock
        waits for a topic partition that is not being read."""
        now = time.monotonic()
        for partition in list(waiting_since):
            if partition not in sequencer.holding():
                del waiting_since[partition]
        for partition in sequencer.holding():
            count = sequencer.buffer.held(partition)
            held, since = waiting_since.get(partition, (-1, now))
            if held != count:
                waiting_since[partition] = (count, now)
            elif now - since >= WAITING_REPORT_SECONDS:
                waiting_since[partition] = (count, now)
                log.warning(
                    "partition %s: %s events waiting for %.0f s with no input coming; "
                    "last sweep %s, clock %s; %s",
                    partition,
                    count,
                    now - since,
                    sequencer.last_sweep.get(partition),
                    clocks.get(partition),
                    watermark.describe(partition, highwater),
                )

    def pace(partitions: Iterable[int]) -> None:
        """Pause the topics read ahead of a partition's watermark while many of its
        events wait, and resume them once few do (see ReadAhead)."""
        pause: list[TP] = []
        restart: list[TP] = []
        for partition in partitions:
            stop, go = read_ahead.update(partition, sequencer.buffer.held(partition), watermark)
            pause.extend(TP(topic, part) for topic, part in stop)
            restart.extend(TP(topic, part) for topic, part in go)
        if pause:
            p.app.consumer.pause_partitions(pause)
        if restart:
            p.app.consumer.resume_partitions(restart)

    # Partitions whose reading start is known (read floors loaded; in event-clock
    # mode also told to the watermark).
    started: set[int] = set()
    # How far each topic partition's messages are applied and stored (offset after
    # the last one), as stored beside the states: a message below it is skipped.
    floors: dict[tuple[str, int], int] = {}

    # Partitions whose read floors are sent again with the next store (see below).
    resend_floors: set[int] = set()
    exit_after = [int(os.environ.get(FAULT_EXIT_ENV) or 0)]

    def resend_unsent(partition: int) -> list[tuple[Topic, bytes | None, bytes]]:
        """The customers whose changes were on their way to the changelog when the
        worker last stored them (a kill -9 can cut that off; a stop or a rebalance
        waits for it): their states, the partition's sweep progress and read floors
        go to the changelog again with the next store, so it holds everything the
        local store does. Identical records sent twice change nothing. The warnings
        and dead letters the batch had sent are returned, to be sent again (the same
        records: the dispatcher and the warning's id keep one)."""
        noted = cast(Any, p.sweep_progress.data).get(unsent_records_key(partition))
        records = [
            (Topic(topic), _unb64(key), base64.b64decode(value))
            for topic, key, value in (json.loads(noted) if noted else [])
        ]
        unsent = cast(Any, p.sweep_progress.data).get(unsent_key(partition))
        if not unsent:
            return records
        block = partition_block(partition)
        rows = dirty.setdefault(partition, set())
        rows.update(block.rows[c] for c in json.loads(unsent) if c in block.rows)
        progress = p.sweep_progress.get(str(partition))
        if progress:
            swept[partition] = max(swept.get(partition, 0.0), progress)
        resend_floors.add(partition)
        return records

    async def start_reading(partitions: set[int]) -> None:
        """Load the read floors of these partitions and tell the watermark where
        reading starts: the committed offsets, or the read floor where that is
        further (the events before it are applied and stored). Without it, a topic
        with nothing new since a restart or a rebalance would hold the clock for good."""
        for partition in partitions:
            for name in floor_topics:
                floor = p.sweep_progress.get(read_floor_key(name, partition))
                if floor:
                    floors[(name, partition)] = int(floor)
            # before anything new: sent again (the same ids), and noted again
            for topic, key, value in resend_unsent(partition):
                await send_out(partition, topic, key, value)
        if event_clock:
            tps = [TopicPartition(name, part) for name in input_names for part in partitions]
            starts = await asyncio.to_thread(committed_offsets, settings, p.app.conf.id, tps)
            for tp, offset in starts.items():
                floor = floors.get((tp.topic, tp.partition))
                if offset is not None or floor is not None:
                    start = max(offset or 0, floor or 0)
                    watermark.start(tp.topic, tp.partition, start)
        started.update(partitions)

    async def process(batch: list[Message]) -> None:
        """Handle a batch of messages: apply, sweep, store, ack."""
        received_at = time.time()
        ends.clear()
        new = {message.partition for message in batch} - started
        if new:
            await start_reading(new)
        consumed: Counter[str] = Counter()
        last_of: dict[int, Message] = {}
        read_here: set[tuple[str, int]] = set()
        moved: dict[int, None] = {}  # partitions whose watermark may move, in order
        for message in batch:
            partition = message.partition
            key = (message.topic, partition)
            if message.offset <= read_to.get(key, -1):
                # Delivered again without a rebalance (Faust seeks back to the
                # committed offsets when a table recovery ends): the first copy
                # is in hand, held or finished.
                continue
            read_to[key] = message.offset
            read_here.add(key)
            acks.received(message)
            last_of[partition] = last_message[partition] = message
            logical = topic_names.get(message.topic)
            consumed[logical.value if logical else "unknown"] += 1
            if message.timestamp:  # the producer's or broker's time (Faust gives seconds)
                received_at = min(received_at, message.timestamp)
            if message.offset < floors.get((message.topic, partition), 0):
                # Applied and stored before a stop, a crash or a rebalance that cut
                # off the commit: read again, skipped.
                metrics.EVENTS_DUPLICATE.inc()
                acks.finished(message)
                if event_clock:
                    watermark.observe(message.topic, partition, message.offset)
                continue
            if logical is Topic.TICKS:
                if not event_clock:
                    last = wall_last_sweep.get(partition, 0.0)
                    for boundary in due_sweeps(last, time.time(), every):
                        await sweep_at(partition, boundary, "wall", received_at)
                        wall_last_sweep[partition] = boundary
                acks.finished(message)
                continue
            try:
                decoded = decode(message, logical)
            except InvalidEvent as exc:
                await dead_letter(message, str(exc), "invalid")
                acks.finished(message)
                if event_clock:
                    watermark.observe(message.topic, partition, message.offset)
                    await advance(partition, received_at)
                continue
            except Exception as exc:  # an agent must never die on one message
                log.exception(
                    "could not process %s[%s]@%s", message.topic, partition, message.offset
                )
                await dead_letter(message, f"processing error: {exc!r}", "processing_error")
                acks.finished(message)
                continue
            if not event_clock:
                apply(partition, decoded, message)
                acks.finished(message)
                continue
            event_ts = decoded.epoch
            watermark.observe(message.topic, partition, message.offset, event_ts)
            resume(partition)
            late = sequencer.offer(partition, event_ts, (decoded, message))
            await run(partition, late, received_at)
            if sequencer.last_sweep.get(partition, 0.0) > 0:
                moved.setdefault(partition)
            else:  # the first sweep: at the first boundary the clock passes, as in a batch run
                await advance(partition, received_at)
        # Each partition's clock once the whole fetch is in hand: the watermark is
        # the same as after its last message, and the sweeps it lets run see
        # every event of the fetch before their boundary (due_sweeps gives every
        # boundary since the last sweep).
        for partition in moved:
            await advance(partition, received_at)
        if event_clock:
            await advance_waiting(last_of, received_at)
            pace({partition for _, partition in read_ahead.paused} | set(last_of))
        await store(last_of)

        for topic, count in consumed.items():
            metrics.EVENTS_CONSUMED.labels(topic).inc(count)
        for topic, partition in read_here:
            end = highwater(topic, partition)
            if end is not None:
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(
                    max(0, end - read_to[(topic, partition)] - 1)
                )
        if newest[0]:
            metrics.PROCESSING_LAG.set(max(0.0, time.time() - newest[0]))
        metrics.EVENTS_WAITING.set(len(sequencer))
        if event_clock:
            metrics.EVENT_TIME_WATERMARK.set(max(watermark.value.values(), default=0.0))
        open_by_type = np.zeros(len(WARNING_TYPES), np.int64)
        for block in blocks.values():
            open_by_type += (block.used()["episode_severity"] >= 0).sum(axis=0)
        for warning_type, count in zip(WARNING_TYPES, open_by_type.tolist(), strict=True):
            metrics.OPEN_EPISODES.labels(warning_type).set(count)

    async def handle(batch: list[Message]) -> None:
        async with busy:
            await process(batch)

    on_batches(p.app, p.inputs, handle, idle)
