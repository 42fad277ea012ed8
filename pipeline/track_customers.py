"""Agent ``track_customers``: keeps each customer's state and raises warnings.

A thin loop: decode and validate the message (anything unusable goes to the
dead-letter topic with the reason), fold it into the customer's state with
:func:`pipeline.features.apply_event` and store the state. Whenever the clock
passes a sweep boundary, every customer of the partition is re-evaluated
(:mod:`pipeline.processing`) and warning episodes that open or close are sent.

``event`` clock (replay, simulation): the partition's event-time watermark
across all input topics. Events wait in a reorder buffer until the watermark
passes them, so a sweep never sees an event from after its boundary, however
the topics interleave; a held event is acked (its offset committed) only once
applied, so a crash loses nothing. ``wall`` clock (live): events apply at
once and ticks from :mod:`pipeline.sweep_clock` wake the sweeps.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, EventT

from pipeline import metrics
from pipeline.app import Pipeline
from pipeline.events import (
    EVENT_TOPICS,
    TOPIC_OF_TYPE,
    WARNING_TYPES,
    CustomerEvent,
    DeadLetter,
    InvalidEvent,
    Topic,
    WarningRecord,
    decode_event,
    encode_event,
)
from pipeline.features import CustomerState, apply_event, new_state, to_epoch
from pipeline.processing import Apply, Sequencer, Sweep, Watermark, due_sweeps, sweep
from pipeline.scoring import INPUT_FEATURES, ModelHolder

log = logging.getLogger(__name__)

REVENUE = INPUT_FEATURES.index("revenue_52w")

#: An event waiting to be applied: decoded, and the Faust event to ack after.
Held = tuple[CustomerEvent, EventT[bytes]]


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "backslashreplace")


def register(p: Pipeline) -> None:
    """Attach the agent to the app."""
    settings = p.settings
    thresholds = settings.warnings
    every = settings.clock.sweep_every_hours * 3600
    topic_names = {settings.topic(t): t for t in Topic}
    input_names = [settings.topic(t) for t in EVENT_TOPICS]
    watermark = Watermark(input_names)
    sequencer: Sequencer[Held] = Sequencer(every, settings.clock.allowed_lateness_hours * 3600)
    wall_last_sweep: dict[int, float] = {}
    models = ModelHolder(Path(settings.model.registry))

    published: list[str] = []

    def refresh_model() -> None:
        refused = models.refused
        model = models.refresh()
        if models.refused is not None and models.refused != refused:
            metrics.MODEL_REFUSED.inc()
        version = model.version if model else "none"
        if published[-1:] != [version]:
            metrics.MODEL.info({"version": version})
            if model is not None and model.created_at:
                metrics.MODEL_CREATED.set(model.created_at)
            published.append(version)

    refresh_model()  # before the first sweep: a promoted model serves from the start

    @p.app.timer(interval=settings.model.reload_seconds, name="follow_promoted_model")  # type: ignore[untyped-decorator]
    async def follow_promoted_model() -> None:
        refresh_model()

    def highwater(topic: str, partition: int) -> int | None:
        try:
            end = p.app.consumer.highwater(TP(topic, partition))
        except ConsumerNotStarted:
            return None  # no fetch yet: nothing is known to be unread
        return int(end) if end is not None and end >= 0 else None

    async def dead_letter(event: EventT[bytes], reason: str, kind: str) -> None:
        message = event.message
        record = DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=_text(message.key),
            payload=_text(message.value) or "",
            error=reason,
            received_at=datetime.now(UTC),
        )
        metrics.INVALID_EVENTS.labels(kind).inc()
        metrics.DEAD_LETTERS.inc()
        await p.dead_letters.send(key=message.key, value=encode_event(record))

    async def emit(records: list[WarningRecord], received_at: float) -> None:
        for record in records:
            metrics.WARNINGS.labels(record.warning_type, record.status, record.severity).inc()
            await p.warnings.send(key=record.customer_id.encode(), value=encode_event(record))
            now = time.time()
            metrics.WARNING_LATENCY.labels("event_time").observe(
                max(0.0, now - to_epoch(record.at))
            )
            metrics.WARNING_LATENCY.labels("ingest").observe(max(0.0, now - received_at))

    # Decoded states of each partition this worker owns, filled from the table on
    # first use: sweeps then never decode the whole table again. Forgotten on
    # every rebalance, when another worker may have changed what we held.
    decoded_states: dict[int, dict[str, CustomerState]] = {}

    def partition_states(partition: int) -> dict[str, CustomerState]:
        states = decoded_states.get(partition)
        if states is None:
            states = decoded_states[partition] = {
                customer_id: CustomerState.from_row(row)
                for customer_id, (row_partition, row) in list(p.states.items())
                if row_partition == partition
            }
            metrics.CUSTOMERS_TRACKED.set(sum(len(d) for d in decoded_states.values()))
        return states

    def store(partition: int, state: CustomerState) -> None:
        partition_states(partition)[state.customer_id] = state
        p.states[state.customer_id] = [partition, state.to_row()]

    @p.app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust stub too narrow
    async def forget_partitions(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # After a rebalance Faust re-seeks to the committed offsets, so events
        # still held in the buffer (never acked) are delivered again.
        decoded_states.clear()
        scored.clear()
        expected_loss.clear()
        metrics.CUSTOMERS_TRACKED.set(0)
        resumed.clear()
        wall_last_sweep.clear()
        watermark.reset()
        sequencer.clear()

    newest = [0.0]  # event time of the newest event applied

    def apply(partition: int, decoded: CustomerEvent, late: bool = False) -> None:
        state = partition_states(partition).get(decoded.customer_id)
        if state is None:
            state = new_state(decoded.customer_id)
            metrics.CUSTOMERS_TRACKED.inc()  # stored below
        if late:
            state.late_events += 1
        if apply_event(state, decoded):
            store(partition, state)
            newest[0] = max(newest[0], to_epoch(decoded.occurred_at))
            metrics.PROCESSING_LAG.set(max(0.0, time.time() - newest[0]))
        else:
            metrics.EVENTS_DUPLICATE.inc()

    # The customers each partition's last sweep scored: the live population
    # whose drift against the training rows the metrics report.
    scored: dict[int, list[Any]] = {}
    expected_loss: dict[int, float] = {}

    async def sweep_at(
        partition: int, boundary: float, clock_name: str, received_at: float
    ) -> None:
        batches: list[Any] = []
        loss = [0.0]

        def observe(rows: Any, probabilities: Any) -> None:
            batches.append(rows)
            loss[0] += float(np.dot(probabilities, np.nan_to_num(rows[:, REVENUE])))
            for probability in probabilities:
                metrics.CHURN_SCORE.observe(float(probability))

        model = models.model
        changed = sweep(
            partition_states(partition).values(),
            boundary,
            thresholds,
            model,
            settings.model.batch_size,
            settings.model.top_reasons,
            observe,
        )
        for state, records in changed:
            store(partition, state)
            await emit(records, received_at)
        metrics.SWEEPS.labels(clock_name).inc()
        open_by_type: dict[str, int] = dict.fromkeys(WARNING_TYPES, 0)
        for states in decoded_states.values():
            for state in states.values():
                for warning_type in state.episodes:
                    open_by_type[warning_type] = open_by_type.get(warning_type, 0) + 1
        for warning_type, count in open_by_type.items():
            metrics.OPEN_EPISODES.labels(warning_type).set(count)
        if model is not None and batches:
            scored[partition] = batches
            expected_loss[partition] = loss[0]
            metrics.EXPECTED_LOSS.set(sum(expected_loss.values()))
            population = np.vstack([rows for rows_list in scored.values() for rows in rows_list])
            for feature, value in model.feature_drift(population).items():
                metrics.FEATURE_DRIFT.labels(feature).set(value)

    resumed: set[int] = set()

    def resume(partition: int) -> None:
        """Continue the partition's sweeps where they stopped (before a restart or rebalance)."""
        if partition not in resumed:
            done = p.sweep_progress.get(str(partition)) or 0.0
            sequencer.last_sweep[partition] = max(sequencer.last_sweep.get(partition, 0.0), done)
            resumed.add(partition)

    async def run(
        stream: Any, partition: int, steps: list[Apply[Held] | Sweep], received_at: float
    ) -> None:
        for step in steps:
            if isinstance(step, Sweep):
                await sweep_at(partition, step.boundary, "event", received_at)
                p.sweep_progress[str(partition)] = step.boundary
                continue
            decoded, held = step.item
            if step.late:
                metrics.LATE_EVENTS.inc()
                log.warning(
                    "late event %s for %s at %s: applied after its sweep",
                    decoded.event_id,
                    decoded.customer_id,
                    decoded.occurred_at.isoformat(),
                )
            apply(partition, decoded, late=step.late)
            await stream.ack(held)
        metrics.EVENTS_WAITING.set(len(sequencer))

    def event_clock(partition: int) -> float:
        now = watermark.advance(partition, highwater)
        metrics.EVENT_TIME_WATERMARK.set(max(watermark.value.values(), default=0.0))
        return now

    async def process(stream: Any, event: EventT[bytes]) -> bool:
        """Handle one message; True when it is done with (False: held for later)."""
        message = event.message
        logical = topic_names.get(message.topic)
        metrics.EVENTS_CONSUMED.labels(logical.value if logical else "unknown").inc()
        # the producer's or broker's timestamp (Faust gives seconds); when unknown, now
        received_at = message.timestamp if message.timestamp else time.time()
        end = highwater(message.topic, message.partition)
        if end is not None:
            metrics.CONSUMER_LAG.labels(message.topic, str(message.partition)).set(
                max(0, end - message.offset - 1)
            )
        if logical is Topic.TICKS:
            if settings.clock.mode == "wall":
                last = wall_last_sweep.get(message.partition, 0.0)
                for boundary in due_sweeps(last, time.time(), every):
                    await sweep_at(message.partition, boundary, "wall", received_at)
                    wall_last_sweep[message.partition] = boundary
            return True
        try:
            decoded = decode_event(message.value or b"", message.key)
            expected = TOPIC_OF_TYPE[decoded.type]
            if logical is not None and logical is not expected:
                raise InvalidEvent(
                    f"a {decoded.type} event belongs on {settings.topic(expected)}, "
                    f"not {message.topic}"
                )
        except InvalidEvent as exc:
            await dead_letter(event, str(exc), "invalid")
            if settings.clock.mode == "event":
                watermark.observe(message.topic, message.partition, message.offset)
                now = event_clock(message.partition)
                resume(message.partition)
                await run(
                    stream,
                    message.partition,
                    sequencer.advance(message.partition, now),
                    received_at,
                )
            return True
        if settings.clock.mode == "wall":
            apply(message.partition, decoded)
            return True
        event_ts = to_epoch(decoded.occurred_at)
        watermark.observe(message.topic, message.partition, message.offset, event_ts)
        now = event_clock(message.partition)
        resume(message.partition)
        await run(
            stream,
            message.partition,
            sequencer.offer(message.partition, event_ts, (decoded, event), now),
            received_at,
        )
        return False  # acked by run() once applied

    @p.app.agent(p.inputs, name="track_customers")
    async def track_customers(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            try:
                done = await process(manual, event)
            except Exception as exc:  # an agent must never die on one message
                log.exception(
                    "could not process %s[%s]@%s",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                )
                await dead_letter(event, f"processing error: {exc!r}", "processing_error")
                done = True
            if done:
                await manual.ack(event)
