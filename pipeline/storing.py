"""Storing what a batch changed (:class:`Store`), in an order a crash cannot break.

The local store first, in one step with no pause; then, in a task the next
batch's work overlaps, the changelog in order (the batch's warnings and dead
letters, the customers' states, the partitions' sweep progress and read
floors), and last the acks and the commit. What the local store holds but the
changelog may not yet is noted locally (:mod:`pipeline.progress`), so a
restart after a ``kill -9`` sends it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from faust.types import Message

from churnwatch.core.topics import Topic
from churnwatch.pipeline.app import Pipeline
from churnwatch.pipeline.faust_adapter import send_to_changelog, storing_for
from churnwatch.pipeline.partition_task import PartitionTask
from churnwatch.pipeline.progress import (
    note_delivered,
    note_records,
    note_unsent_customers,
    read_floor_key,
)

log = logging.getLogger(__name__)

#: A write for a table's changelog: (table, key, value, partition).
Send = tuple[Any, str, Any, int]


class Store:
    """Writes the batches' changes of one worker's partitions."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        # The changelog writes of a store still on their way (see write()).
        self.publishing: set[asyncio.Future[None]] = set()

    async def done(self) -> None:
        """Until the stores' sends on their way are done (their errors are logged)."""
        if self.publishing:
            await asyncio.gather(*self.publishing, return_exceptions=True)

    async def write(self, tasks: dict[int, PartitionTask], touched: Iterable[int]) -> None:
        """Take what the ``touched`` partitions' tasks did (:class:`FetchResult`) and
        store it: send the warnings and dead letters; write every changed customer
        once, the sweeps that changed them and how far each input partition is
        applied; then send those (after the warnings), ack and commit the messages
        they cover, in a task the next store waits for.

        The local writes happen in one step with no pause in between, so a stop or
        a rebalance (which cancel the batch at its next pause) never leaves some
        customers stored past the sweep progress and others not; the changelog
        sends, flush and commit that follow are shielded from the cancel. With
        the read floors stored beside the states, a restart skips the messages
        whose effects were stored even when their commit was lost."""
        p = self.p
        if self.publishing:
            # The previous batch's sends still on their way (they overlap this
            # batch's work): this batch's local writes and sends come after them.
            await asyncio.shield(asyncio.gather(*self.publishing))
        if p.app.rebalancing:
            # The partitions may be another worker's by now: store nothing, ack
            # nothing; the revoke that follows forgets this batch and the next
            # owner reads it again.
            return
        results = [tasks[n].take_result() for n in touched]
        for result in results:
            for topic, key, value in result.outgoing:
                channel = p.warnings if topic is Topic.WARNINGS else p.dead_letters
                await channel.send(key=key, value=value)
        if p.app.rebalancing:
            return  # (as above: the sends paused)
        # From here to the task: no pause.
        sends: list[Send] = []

        def put(table: Any, key: str, value: Any, partition: int) -> None:
            table.data[key] = value
            sends.append((table, key, value, partition))

        local: Any = p.sweep_progress.data
        noted: list[int] = []  # partitions whose sent records are noted
        for result in results:
            partition = result.partition
            with storing_for(p.app, partition):  # keys filed under this partition
                for customer_id, value in result.states:
                    put(p.states, customer_id, value, partition)
                if result.states:
                    # Local only: a kill -9 before these reach the changelog leaves
                    # them in the local store alone, so a restart sends them again.
                    note_unsent_customers(local, partition, [c for c, _ in result.states])
                if result.swept is not None:
                    put(p.sweep_progress, str(partition), result.swept, partition)
                # The same for the warnings and dead letters this batch sent (still in
                # the producer's buffer, maybe): local only, replaced by the next store.
                if note_records(local, partition, result.outgoing):
                    noted.append(partition)
                for name, offset in (result.floors_again or {}).items():
                    put(p.sweep_progress, read_floor_key(name, partition), float(offset), partition)
        ackable = [message for result in results for message in result.ackable]
        # the newest acked message of each topic partition (ackable is in offset order)
        last_acked = {message.tp: message for message in ackable}
        for tp, message in last_acked.items():
            with storing_for(p.app, tp.partition):
                floor = read_floor_key(tp.topic, tp.partition)
                put(p.sweep_progress, floor, float(message.offset + 1), tp.partition)
        if not sends and not ackable and not noted:
            return
        # Not awaited here: the next fetch is taken and worked on while these go
        # out (the next store waits for them first, a revoke and a stop too).
        task = asyncio.ensure_future(self._publish(sends, ackable, noted))
        self.publishing.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self.publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not send a batch's changes: %r", task.exception())

    async def _publish(self, sends: list[Send], ackable: list[Message], noted: list[int]) -> None:
        """On the broker in this order, each step waiting for the one before: the
        batch's warnings and dead letters, the customers' states, the partitions'
        sweep progress and read floors; then the acks and the commit. Without
        transactions a crash can cut this anywhere, so nothing lands ahead of
        what it vouches for: a stored episode's warning was sent, and a sweep
        progress or read floor never runs ahead of the states it covers (a state
        ahead of them is recognised by its own ``stream_*`` fields)."""
        p = self.p
        producer = p.app.producer
        await producer.flush()
        local: Any = p.sweep_progress.data
        for partition in noted:  # delivered: nothing to send again after a crash
            with storing_for(p.app, partition):
                note_delivered(local, partition)
        for step in (
            [send for send in sends if send[0] is p.states],
            [send for send in sends if send[0] is not p.states],
        ):
            for table, key, value, partition in step:
                await send_to_changelog(table, key, value, partition)
            if step:
                await producer.flush()
        if not ackable:
            return
        ack = p.app.consumer.ack
        for message in ackable:
            ack(message)
        await p.app.consumer.commit()
