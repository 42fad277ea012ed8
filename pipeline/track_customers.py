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
from typing import Any

from faust.exceptions import ConsumerNotStarted
from faust.types import TP, EventT

from pipeline import metrics
from pipeline.app import Pipeline
from pipeline.events import (
    EVENT_TOPICS,
    TOPIC_OF_TYPE,
    CustomerEvent,
    DeadLetter,
    InvalidEvent,
    Topic,
    WarningRecord,
    decode_event,
    encode_event,
)
from pipeline.features import CustomerState, apply_event, new_state, to_epoch
from pipeline.processing import ReorderBuffer, Watermark, due_sweeps, sweep

log = logging.getLogger(__name__)


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
    waiting: ReorderBuffer[tuple[CustomerEvent, EventT[bytes]]] = ReorderBuffer()
    last_sweep: dict[int, float] = {}

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

    async def emit(records: list[WarningRecord]) -> None:
        for record in records:
            metrics.WARNINGS.labels(record.warning_type, record.status, record.severity).inc()
            await p.warnings.send(key=record.customer_id.encode(), value=encode_event(record))

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
        return states

    def store(partition: int, state: CustomerState) -> None:
        partition_states(partition)[state.customer_id] = state
        p.states[state.customer_id] = [partition, state.to_row()]

    @p.app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust stub too narrow
    async def forget_partitions(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # After a rebalance Faust re-seeks to the committed offsets, so events
        # still held in the buffer (never acked) are delivered again.
        decoded_states.clear()
        last_sweep.clear()
        watermark.reset()
        waiting.clear()

    def apply(partition: int, decoded: CustomerEvent) -> None:
        state = partition_states(partition).get(decoded.customer_id)
        if state is None:
            state = new_state(decoded.customer_id)
            metrics.CUSTOMERS_TRACKED.inc()
        if apply_event(state, decoded):
            store(partition, state)
        else:
            metrics.EVENTS_DUPLICATE.inc()

    async def sweep_at(partition: int, boundary: float, clock_name: str) -> None:
        for state, records in sweep(partition_states(partition).values(), boundary, thresholds):
            store(partition, state)
            await emit(records)
        last_sweep[partition] = boundary
        metrics.SWEEPS.labels(clock_name).inc()

    async def release(stream: Any, partition: int, before: float, inclusive: bool) -> None:
        for decoded, held in waiting.release(partition, before, inclusive):
            apply(partition, decoded)
            await stream.ack(held)

    async def advance_event_clock(stream: Any, partition: int) -> None:
        """Apply what the watermark allows, sweeping each boundary it passes on the way."""
        now = watermark.advance(partition, highwater)
        metrics.EVENT_TIME_WATERMARK.set(max(watermark.value.values(), default=0.0))
        for boundary in due_sweeps(last_sweep.get(partition, 0.0), now, every):
            await release(stream, partition, boundary, inclusive=False)
            await sweep_at(partition, boundary, "event")
        await release(stream, partition, now, inclusive=True)
        metrics.EVENTS_WAITING.set(len(waiting))

    async def process(stream: Any, event: EventT[bytes]) -> bool:
        """Handle one message; True when it is done with (False: held for later)."""
        message = event.message
        logical = topic_names.get(message.topic)
        metrics.EVENTS_CONSUMED.labels(logical.value if logical else "unknown").inc()
        if logical is Topic.TICKS:
            if settings.clock.mode == "wall":
                for boundary in due_sweeps(
                    last_sweep.get(message.partition, 0.0), time.time(), every
                ):
                    await sweep_at(message.partition, boundary, "wall")
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
                await advance_event_clock(stream, message.partition)
            return True
        if settings.clock.mode == "wall":
            apply(message.partition, decoded)
            return True
        event_ts = to_epoch(decoded.occurred_at)
        watermark.observe(message.topic, message.partition, message.offset, event_ts)
        waiting.push(message.partition, event_ts, (decoded, event))
        await advance_event_clock(stream, message.partition)
        return False  # acked when released from the buffer

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
