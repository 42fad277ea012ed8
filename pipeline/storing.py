"""The worker's checkpoints on Faust: :class:`Store` takes what a fetch's work
changed and runs it as one :class:`~pipeline.checkpoint.Checkpoint` through
:class:`FaustOutputs` (the producer, the consumer group, the tables' local
stores), in a task the next fetch's work overlaps. In exactly-once mode it runs
a :class:`~pipeline.checkpoint.TransactionalCheckpoint` through
:class:`FaustTransactions` instead: a transaction per input partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from faust.types import TP, Message

from churnwatch.core.topics import Topic
from churnwatch.pipeline.app import Pipeline
from churnwatch.pipeline.checkpoint import (
    STATES,
    Change,
    Checkpoint,
    Outputs,
    Transaction,
    TransactionalCheckpoint,
    Transactions,
    plan_of,
    plans_by_partition,
)
from churnwatch.pipeline.faust_adapter import begun, storing_for, transaction_producer
from churnwatch.pipeline.partition_task import PartitionTask
from churnwatch.pipeline.progress import Outgoing

log = logging.getLogger(__name__)


class FaustOutputs(Outputs):
    """A checkpoint's writes through Faust: the warnings, dead-letter and health topics, the
    tables' changelogs (straight to the producer: Faust's table buffer hands the
    changes over one by one and its flush gives up after 0.1 s), the consumer's
    acks and commit, and the tables' local stores, with the changelog offset each
    store partition holds (what Faust's recovery reads the changelog on from)."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        # The newest changelog offset delivered per table and changelog partition,
        # recorded in the local store with the changes (store_locally).
        self.delivered: dict[tuple[str, TP], int] = {}

    def table(self, name: str) -> Any:
        """The Faust table a change of ``name`` (STATES or PROGRESS) goes to."""
        return self.p.states if name == STATES else self.p.sweep_progress

    def channel(self, topic: Topic) -> Any:
        """The Faust topic a warning, dead letter or account change goes to."""
        outputs = {
            Topic.WARNINGS: self.p.warnings,
            Topic.DEAD_LETTERS: self.p.dead_letters,
            Topic.HEALTH: self.p.health,
        }
        return outputs[topic]

    def note_delivered(self, name: str, sent: Any) -> None:
        """Note where a change landed (``sent``: its record metadata)."""
        key = (name, TP(sent.topic, sent.partition))
        self.delivered[key] = max(self.delivered.get(key, -1), sent.offset)

    async def send(self, record: Outgoing) -> None:
        topic, key, value = record
        await self.channel(topic).send(key=key, value=value)

    async def send_change(self, change: Change) -> None:
        table = self.table(change.table)

        def delivered(future: Any) -> None:
            self.note_delivered(change.table, future.result())

        await table.changelog_topic.send(
            key=change.key,
            value=change.value,
            partition=change.partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=delivered,
            force=True,  # (no buffering in the topic: the producer batches)
        )

    async def flush(self) -> None:
        await self.p.app.producer.flush()

    async def commit(self, messages: Sequence[Message]) -> None:
        consumer = self.p.app.consumer
        for message in messages:
            consumer.ack(message)
        await consumer.commit()

    def store_locally(self, changes: Sequence[Change]) -> None:
        app = self.p.app
        by_partition: dict[int, list[Change]] = {}
        for change in changes:
            by_partition.setdefault(change.partition, []).append(change)
        for partition, listed in by_partition.items():
            with storing_for(app, partition):  # keys filed under this partition
                for change in listed:
                    self.table(change.table).data[change.key] = change.value
        for (name, tp), offset in self.delivered.items():
            self.table(name).data.set_persisted_offset(tp, offset)
        self.delivered.clear()


class FaustTransaction(Transaction):
    """One input partition's transaction on the transactional producer Faust keeps
    for it; what it sent is noted as delivered once it is committed."""

    def __init__(self, outputs: FaustOutputs, producer: AIOKafkaProducer) -> None:
        self.outputs = outputs
        self.producer = producer
        self.changes: list[tuple[str, asyncio.Future[Any]]] = []

    async def send(self, record: Outgoing) -> None:
        topic, key, value = record
        await self.producer.send(self.outputs.channel(topic).get_topic_name(), value, key)

    async def send_change(self, change: Change) -> None:
        table = self.outputs.table(change.table)
        changelog = table.changelog_topic
        key, _ = changelog.prepare_key(change.key, table.key_serializer)
        value, _ = changelog.prepare_value(change.value, table.value_serializer)
        sent = await self.producer.send(
            changelog.get_topic_name(), value, key, partition=change.partition
        )
        self.changes.append((change.table, sent))

    async def commit(self, messages: Sequence[Message]) -> None:
        if messages:
            offsets = {TopicPartition(m.tp.topic, m.tp.partition): m.offset + 1 for m in messages}
            await self.producer.send_offsets_to_transaction(offsets, self.outputs.p.app.conf.id)
        await self.producer.commit_transaction()  # (everything sent is delivered first)
        for name, sent in self.changes:
            self.outputs.note_delivered(name, sent.result())


class FaustTransactions(Transactions):
    """Exactly-once checkpoints through Faust: each input partition's transactional
    producer (:func:`~pipeline.faust_adapter.transaction_producer`), then the
    tables' local stores as :class:`FaustOutputs` writes them."""

    def __init__(self, p: Pipeline) -> None:
        self.outputs = FaustOutputs(p)
        self.input_topic = next(iter(p.inputs.topics))  # (the partition's topics share one)

    async def begin(self, partition: int) -> Transaction:
        app = self.outputs.p.app
        producer = await begun(transaction_producer(app, self.input_topic, partition))
        return FaustTransaction(self.outputs, producer)

    def store_locally(self, changes: Sequence[Change]) -> None:
        self.outputs.store_locally(changes)


class Store:
    """One checkpoint per fetch of one worker's partitions."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.exactly_once = p.settings.worker.processing_guarantee == "exactly_once"
        self.checkpoint = Checkpoint(FaustOutputs(p))
        self.transactional = TransactionalCheckpoint(FaustTransactions(p))
        # The checkpoint on its way (see write()).
        self.publishing: set[asyncio.Future[None]] = set()

    async def done(self) -> None:
        """Until the checkpoint on its way is done (its errors are logged)."""
        if self.publishing:
            await asyncio.gather(*self.publishing, return_exceptions=True)

    async def write(self, tasks: dict[int, PartitionTask], touched: Iterable[int]) -> None:
        """Take what the ``touched`` partitions' tasks did (:class:`FetchResult`) and
        run it as one checkpoint, in a task the next fetch's work overlaps (the next
        write, a revoke and a stop wait for it first). The checkpoint is shielded
        from the cancel a stop or a rebalance brings: once begun, it finishes."""
        p = self.p
        if self.publishing:
            # The previous checkpoint still on its way: this one comes after it.
            await asyncio.shield(asyncio.gather(*self.publishing))
        if p.app.rebalancing:
            # The partitions may be another worker's by now: store nothing, ack
            # nothing; the revoke that follows forgets this batch and the next
            # owner reads it again.
            return
        results = [tasks[n].take_result() for n in touched]
        if self.exactly_once:
            plans = plans_by_partition(results)
            if not plans:
                return
            task = asyncio.ensure_future(self.transactional.run(plans))
        else:
            plan = plan_of(results)
            if not plan:
                return
            task = asyncio.ensure_future(self.checkpoint.run(plan))
        self.publishing.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self.publishing.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        if not self.exactly_once:
            log.error("could not complete a checkpoint: %r", error)
            return
        # What the worker holds in memory is past what the broker has now: stop,
        # and a restart (or the partition's new owner) carries on from what was
        # committed.
        log.error("could not commit a checkpoint's transaction, stopping: %r", error)
        asyncio.ensure_future(self.p.app.crash(error))
