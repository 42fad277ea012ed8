"""``track_customers``: keeps each customer's state and raises warnings.

The Faust side of the worker's main agent. Messages come in batches, one per
fetch (:func:`pipeline.faust_adapter.on_batches`, below Faust's per-message
streams); each goes to the :class:`~pipeline.partition_task.PartitionTask`
of its partition, which decodes and validates it (anything unusable goes to
the dead-letter topic with the reason), folds it into the customer's state,
and runs the sweeps the clock passes. At the end of a batch
:class:`~pipeline.storing.Store` sends the warnings and dead letters it made,
writes each customer it touched to the state table once, and only then are
the batch's messages acked, so a crash loses nothing and a redelivered event
is recognised and skipped.

A batch is what one fetch returned: at most ``worker.batch_size`` messages,
fewer when that is all there was, so a quiet stream is never held back
waiting for a full batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, Message
from kafka import TopicPartition

from churnwatch.core.topics import Topic, committed_offsets
from churnwatch.pipeline import metrics
from churnwatch.pipeline.app import Pipeline
from churnwatch.pipeline.events import WARNING_TYPES
from churnwatch.pipeline.faust_adapter import on_batches, paused_by_consumer
from churnwatch.pipeline.partition_task import PartitionTask, Wiring
from churnwatch.pipeline.scoring import ChurnModel, Matrix, ModelHolder
from churnwatch.pipeline.state_format import stored_partition
from churnwatch.pipeline.storing import Store

log = logging.getLogger(__name__)

#: How often the feature-drift gauges are recomputed from the last sweeps' rows.
DRIFT_EVERY_SECONDS = 10.0


def register(p: Pipeline) -> None:
    """Attach the agent to the app."""
    TrackCustomers(p).register()


class TrackCustomers:
    """The partitions this worker owns, their batches, and their stores."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        settings = p.settings
        self.event_clock = settings.clock.mode == "event"
        self.topic_names = {settings.topic(t): t for t in Topic}
        self.models = ModelHolder(Path(settings.model.registry))
        self.wiring = Wiring(settings, self.models, self.highwater, self.scored)
        self.partitions: dict[int, PartitionTask] = {}
        # Each topic partition's end as the batch in hand found it (asked once per
        # batch: the consumer's answer crosses to its thread).
        self.ends: dict[tuple[str, int], int | None] = {}
        # Held while a batch is processed: a rebalance waits for the batch in hand
        # (never for the events held in the reorder buffers, which it drops).
        self.busy = asyncio.Lock()
        self.store = Store(p)
        self.newest = 0.0  # event time of the newest event applied
        # The customers each partition's last sweep scored (the live population
        # whose drift against the training rows the metrics report), and their
        # expected loss.
        self.rows_scored: dict[int, list[Matrix]] = {}
        self.expected_loss: dict[int, float] = {}
        self.drift_due = 0.0  # when the drift gauges are next recomputed (monotonic)
        self.published: str | None = None  # the model version the metrics show

    def register(self) -> None:
        app = self.p.app
        self.refresh_model()  # before the first sweep: a promoted model serves from the start
        interval = self.p.settings.model.reload_seconds

        @app.timer(interval=interval, name="follow_promoted_model")  # type: ignore[untyped-decorator]
        async def follow_promoted_model() -> None:
            self.refresh_model()

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust stub too narrow
        async def forget_partitions(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            # After a rebalance Faust re-seeks to the committed offsets, so events
            # still held in the buffer (never acked) are delivered again.
            began = time.monotonic()
            async with self.busy:
                await self.store.done()  # the last store's sends: let them finish first
                self.forget()
            self.revoke_took(time.monotonic() - began)

        @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust stub too narrow
        async def finish_publishing(_app: Any, **kwargs: Any) -> None:
            # A stop: the last batch's sends, acks and commit go out before the producer closes.
            await self.store.done()

        if not self.event_clock:
            every = self.p.settings.clock.wall_tick_seconds

            @app.timer(interval=every, name="sweep_clock")  # type: ignore[untyped-decorator]
            async def sweep_clock() -> None:
                await self.wall_tick()

        on_batches(app, self.p.inputs, self.handle, self.idle)

    def revoke_took(self, seconds: float) -> None:
        """Say so when a revoke came close to the group's rebalance timeout: a
        member slower than that is dropped from the group while its checkpoint is
        still on its way, and those writes land behind the partition's next owner."""
        allowed = self.p.settings.worker.broker_rebalance_timeout
        if seconds > allowed / 2:
            log.warning(
                "the revoke took %.1f s of the group's %.0f s (worker.broker_rebalance_timeout); "
                "a longer one drops this worker from the group with its checkpoint on its way",
                seconds,
                allowed,
            )

    # -- the model and its metrics ---------------------------------------------

    def refresh_model(self) -> None:
        refused = self.models.refused
        model = self.models.refresh()
        if self.models.refused is not None and self.models.refused != refused:
            metrics.MODEL_REFUSED.inc()
        version = model.version if model else "none"
        if self.published != version:
            metrics.MODEL.info({"version": version})
            metrics.MODEL_CREATED.clear()
            metrics.EXPECTED_LOSS.clear()
            self.expected_loss.clear()
            if model is not None and model.created_at:
                metrics.MODEL_CREATED.labels(version).set(model.created_at)
            self.published = version

    def scored(self, partition: int, model: ChurnModel, rows: list[Matrix], loss: float) -> None:
        """A partition's sweep scored its customers: expected loss and drift gauges."""
        self.rows_scored[partition] = rows
        self.expected_loss[partition] = loss
        metrics.EXPECTED_LOSS.labels(model.version).set(sum(self.expected_loss.values()))
        if time.monotonic() >= self.drift_due:  # a gauge scraped every few seconds
            self.drift_due = time.monotonic() + DRIFT_EVERY_SECONDS
            population = np.vstack([r for listed in self.rows_scored.values() for r in listed])
            for feature, value in model.feature_drift(population).items():
                metrics.FEATURE_DRIFT.labels(feature).set(value)

    # -- the consumer ------------------------------------------------------------

    def highwater(self, topic: str, partition: int) -> int | None:
        key = (topic, partition)
        if key in self.ends:
            return self.ends[key]
        try:
            end = self.p.app.consumer.highwater(TP(topic, partition))
        except ConsumerNotStarted:
            end = None  # no fetch yet: nothing is known to be unread
        self.ends[key] = int(end) if end is not None and end >= 0 else None
        return self.ends[key]

    def pace(self, partitions: set[int]) -> None:
        """Pause the topics read ahead of a partition's watermark while many of its
        events wait, and resume them once few do (see ReadAhead)."""
        pause: list[TP] = []
        restart: list[TP] = []
        for partition in partitions:
            stop, go = self.partitions[partition].pace()
            pause.extend(TP(topic, part) for topic, part in stop)
            restart.extend(TP(topic, part) for topic, part in go)
        if pause:
            self.p.app.consumer.pause_partitions(pause)
        if restart:
            self.p.app.consumer.resume_partitions(restart)

    def own_the_pauses(self) -> None:
        """Resume the input topic partitions the consumer holds paused that the read-ahead
        did not pause. Outside a rebalance or a recovery only the read-ahead pauses
        inputs; a pause left over from a recovery cut short by the next rebalance
        (seen on Apache Kafka: a taken-over partition's quiet topics never fetched,
        its events waiting for a clock they alone could move) is lifted here."""
        app = self.p.app
        if app.rebalancing or app.in_recovery:
            return
        inputs = set(self.wiring.input_names)
        ours = {TP(t, n) for agent in self.partitions.values() for t, n in agent.read_ahead.paused}
        stray = {tp for tp in paused_by_consumer(app) if tp.topic in inputs} - ours
        stray &= set(app.consumer.assignment())
        if stray:
            log.warning(
                "resuming %s input partition(s) paused by nobody here: %s",
                len(stray),
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(stray)),
            )
            app.consumer.resume_partitions(stray)

    def paused_partitions(self) -> set[int]:
        return {n for n, agent in self.partitions.items() if agent.read_ahead.paused}

    def forget(self) -> None:
        """A rebalance: another worker may own these partitions now, and change them."""
        for agent in self.partitions.values():
            agent.on_revoked()
        self.partitions.clear()
        self.rows_scored.clear()
        self.expected_loss.clear()
        metrics.CUSTOMERS_TRACKED.set(0)

    async def start_reading(self, partitions: set[int]) -> None:
        """An agent for each of these partitions, from the states stored, starting
        where the committed offsets (or the read floors) say."""
        p = self.p
        committed: dict[int, dict[str, int | None]] = {n: {} for n in partitions}
        if self.event_clock:
            names = self.wiring.input_names
            tps = [TopicPartition(name, n) for name in names for n in partitions]
            starts = await asyncio.to_thread(committed_offsets, p.settings, p.app.conf.id, tps)
            for tp, offset in starts.items():
                committed[tp.partition][tp.topic] = offset
        stored: dict[int, list[bytes]] = {n: [] for n in partitions}
        for value in list(p.states.values()):
            if value is not None and (n := stored_partition(value)) in stored:
                stored[n].append(value)
        for n in sorted(partitions):
            agent = PartitionTask(n, self.wiring, stored[n], p.sweep_progress)
            agent.start(committed[n])
            self.partitions[n] = agent

    # -- a batch ------------------------------------------------------------------

    async def handle(self, batch: list[Message]) -> None:
        async with self.busy:
            await self.process(batch)

    async def process(self, batch: list[Message]) -> None:
        """Handle a batch of messages: apply, sweep, store, ack."""
        received_at = time.time()
        self.ends.clear()
        new = {message.partition for message in batch} - set(self.partitions)
        if new:
            await self.start_reading(new)
        consumed: Counter[str] = Counter()
        touched: set[int] = set()
        for message in batch:
            agent = self.partitions[message.partition]
            if agent.read_again(message):
                continue
            touched.add(message.partition)
            logical = self.topic_names.get(message.topic)
            consumed[logical.value if logical else "unknown"] += 1
            if message.timestamp:  # the producer's or broker's time (Faust gives seconds)
                received_at = min(received_at, message.timestamp)
            agent.on_event(message, received_at)
        # Each partition's clock once the whole fetch is in hand: the watermark is
        # the same as after its last message, and the sweeps it lets run see
        # every event of the fetch before their boundary (due_sweeps gives every
        # boundary since the last sweep).
        for partition in touched:
            if self.partitions[partition].due:
                self.partitions[partition].on_tick(received_at)
        if self.event_clock:
            self.advance_waiting(touched, received_at)
            self.pace(self.paused_partitions() | touched)
        await self.store.write(self.partitions, touched)
        for topic, count in consumed.items():
            metrics.EVENTS_CONSUMED.labels(topic).inc(count)
        self.report(touched)

    def advance_waiting(self, touched: set[int], received_at: float) -> None:
        """Advance the partitions with events waiting that the batch did not touch:
        a topic partition's end may have become known since (the last fetch of a
        taken-over partition can come before its other topics' ends are)."""
        for partition, agent in self.partitions.items():
            if partition not in touched and agent.holding() and agent.last_message is not None:
                agent.on_tick(received_at)
                touched.add(partition)

    async def idle(self) -> None:
        """A fetch found nothing new: events may still wait for a clock that can move."""
        if not self.event_clock:
            return
        async with self.busy:
            self.ends.clear()
            touched: set[int] = set()
            self.advance_waiting(touched, time.time())
            self.pace(self.paused_partitions())
            self.own_the_pauses()
            if touched:
                await self.store.write(self.partitions, touched)
                self.report(touched)  # (the waiting events' gauge above all)
            now = time.monotonic()
            for agent in self.partitions.values():
                agent.report_waiting(now)

    async def wall_tick(self) -> None:
        """Wall clock: run the sweeps due by now in every partition this worker owns,
        in the worker itself (silent customers send nothing that could wake it),
        including partitions no message has reached since they were assigned."""
        async with self.busy:
            app = self.p.app
            if app.rebalancing or app.in_recovery:
                return  # the partitions are being handed round: the next tick sweeps
            inputs = set(self.wiring.input_names)
            owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in inputs}
            new = owned - set(self.partitions)
            if new:
                await self.start_reading(new)
            now = time.time()
            for partition in owned:
                self.partitions[partition].on_tick(now)
            await self.store.write(self.partitions, owned)
            self.report(owned)

    def report(self, touched: set[int]) -> None:
        """The gauges a batch moves."""
        agents = self.partitions
        for partition in touched:
            agent = agents[partition]
            for topic, offset in agent.read_to.items():
                end = self.highwater(topic, partition)
                if end is not None:
                    lag = max(0, end - offset - 1)
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        self.newest = max([self.newest, *(agent.newest for agent in agents.values())])
        if self.newest:
            metrics.PROCESSING_LAG.set(max(0.0, time.time() - self.newest))
        metrics.EVENTS_WAITING.set(sum(len(agent.sequencer) for agent in agents.values()))
        metrics.CUSTOMERS_TRACKED.set(sum(len(agent.block) for agent in agents.values()))
        if self.event_clock:
            watermarks = [v for agent in agents.values() for v in agent.watermark.value.values()]
            metrics.EVENT_TIME_WATERMARK.set(max(watermarks, default=0.0))
        open_by_type = np.zeros(len(WARNING_TYPES), np.int64)
        for agent in agents.values():
            open_by_type += (agent.block.used()["episode_severity"] >= 0).sum(axis=0)
        for warning_type, count in zip(WARNING_TYPES, open_by_type.tolist(), strict=True):
            metrics.OPEN_EPISODES.labels(warning_type).set(count)
