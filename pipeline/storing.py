"""The worker's checkpoints on Faust: :class:`Store` takes what a fetch's work
changed and runs it as one :class:`~pipeline.checkpoint.Checkpoint` through
:class:`FaustOutputs` (the producer, the consumer group, the tables' local
stores), in a task the next fetch's work overlaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from faust.types import TP, Message

from churnwatch.core.topics import Topic
from churnwatch.pipeline.app import Pipeline
from churnwatch.pipeline.checkpoint import STATES, Change, Checkpoint, Outputs, plan_of
from churnwatch.pipeline.faust_adapter import storing_for
from churnwatch.pipeline.partition_task import PartitionTask
from churnwatch.pipeline.progress import Outgoing

log = logging.getLogger(__name__)


class FaustOutputs(Outputs):
    """A checkpoint's writes through Faust: the warnings and dead-letter topics, the
    tables' changelogs (straight to the producer: Faust's table buffer hands the
    changes over one by one and its flush gives up after 0.1 s), the consumer's
    acks and commit, and the tables' local stores, with the changelog offset each
    store partition holds (what Faust's recovery reads the changelog on from)."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        # The newest changelog offset delivered per table and changelog partition,
        # recorded in the local store with the changes (store_locally).
        self.delivered: dict[tuple[str, TP], int] = {}

    def _table(self, name: str) -> Any:
        return self.p.states if name == STATES else self.p.sweep_progress

    async def send(self, record: Outgoing) -> None:
        topic, key, value = record
        channel = self.p.warnings if topic is Topic.WARNINGS else self.p.dead_letters
        await channel.send(key=key, value=value)

    async def send_change(self, change: Change) -> None:
        table = self._table(change.table)

        def delivered(future: Any) -> None:
            sent = future.result()  # the record's metadata: where it landed
            tp = TP(sent.topic, sent.partition)
            key = (change.table, tp)
            self.delivered[key] = max(self.delivered.get(key, -1), sent.offset)

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
                    self._table(change.table).data[change.key] = change.value
        for (name, tp), offset in self.delivered.items():
            self._table(name).data.set_persisted_offset(tp, offset)
        self.delivered.clear()


class Store:
    """One checkpoint per fetch of one worker's partitions."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.checkpoint = Checkpoint(FaustOutputs(p))
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
        plan = plan_of([tasks[n].take_result() for n in touched])
        if not plan:
            return
        task = asyncio.ensure_future(self.checkpoint.run(plan))
        self.publishing.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self.publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not complete a checkpoint: %r", task.exception())
