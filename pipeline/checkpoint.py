"""A checkpoint: what the worker's partitions did since the last one, on the
broker and in the local store, in an order a crash cannot break.

The order is quix-streams' (and Kafka Streams'): everything goes to the broker
first, the local store last.

1. the warnings and dead letters, then a flush;
2. the changed customers' states to their changelog, then a flush;
3. each partition's sweep progress and read floors to their changelog, then a
   flush;
4. the input messages acked and their offsets committed;
5. the local store: the states, the progress and the changelog offsets they
   hold.

Each step starts once the one before is delivered, so a crash at any point
leaves the broker at or ahead of the local store, never behind it. A restart
reads each changelog on from the offset the local store holds (Faust's table
recovery), so the broker's copy is the truth, and a new owner of the
partition reads the same. What a crash can leave is the at-least-once window:
states on the changelog whose input offsets were not committed yet. Those
messages are read again. Each record says where the stream stood when it was
stored (``stream_*``, :func:`pipeline.progress.holds`), so an event it
already holds is skipped, and the sweeps it already ran are not run for it
again. That works on a compacted changelog too, where a record of an
unfinished checkpoint may have replaced its older version for good.

A warning lands before the state of its episode: a state never says "told"
about a warning the broker does not have. Progress lands after the states it
vouches for.

:class:`Checkpoint` does no I/O of its own: it runs a :class:`Plan` through an
:class:`Outputs`, which is Faust (:class:`pipeline.storing.FaustOutputs`) in
the worker and an in-memory broker in the tests
(``tests/unit/test_checkpoint.py`` crashes it at every step).

**Exactly-once** (``worker.processing_guarantee: exactly_once``, on a broker
with transactions): :class:`TransactionalCheckpoint` makes each partition's
part of the checkpoint one Kafka transaction instead, on that input
partition's transactional producer: its warnings, dead letters, states,
progress and input offsets are committed together or not at all (a crash
before the commit leaves an open transaction, which the partition's next
producer aborts), and the local store is written once they are. Readers that
read committed (every churnwatch consumer, and Faust's changelog recovery in
that mode) never see a checkpoint twice, so the at-least-once window is
gone; the stream stamps stay, harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from faust.types import Message

from churnwatch.pipeline.partition_task import FetchResult
from churnwatch.pipeline.progress import Outgoing, read_floor_key

#: The two tables a checkpoint writes.
STATES = "states"
PROGRESS = "progress"


@dataclass(frozen=True)
class Change:
    """One table write: ``table`` is :data:`STATES` (``value`` an encoded state) or
    :data:`PROGRESS` (``value`` a sweep boundary or a read floor)."""

    table: str
    key: str
    value: bytes | float
    partition: int


@dataclass(frozen=True)
class Plan:
    """One checkpoint's content, in the order it goes out."""

    outgoing: tuple[Outgoing, ...]
    states: tuple[Change, ...]
    progress: tuple[Change, ...]
    #: The input messages it makes ackable, in offset order per topic partition.
    ackable: tuple[Message, ...]

    def __bool__(self) -> bool:
        return bool(self.outgoing or self.states or self.progress or self.ackable)


def plan_of(results: Sequence[FetchResult]) -> Plan:
    """The checkpoint of what the partitions' tasks did (:meth:`PartitionTask.take_result`):
    their warnings and dead letters, their changed customers, each partition's last
    sweep and, for each input topic partition, the read floor after its newest
    message acked (its effects are in the states of this checkpoint or an earlier one)."""
    states: list[Change] = []
    progress: list[Change] = []
    for result in results:
        states += (Change(STATES, c, value, result.partition) for c, value in result.states)
        if result.swept is not None:
            progress.append(Change(PROGRESS, str(result.partition), result.swept, result.partition))
    ackable = tuple(message for result in results for message in result.ackable)
    last_acked = {message.tp: message for message in ackable}  # (in offset order: the newest)
    for tp, message in last_acked.items():
        floor = read_floor_key(tp.topic, tp.partition)
        progress.append(Change(PROGRESS, floor, float(message.offset + 1), tp.partition))
    outgoing = tuple(record for result in results for record in result.outgoing)
    return Plan(outgoing, tuple(states), tuple(progress), ackable)


def plans_by_partition(results: Sequence[FetchResult]) -> dict[int, Plan]:
    """Each partition's own checkpoint (for :class:`TransactionalCheckpoint`), the
    partitions with nothing to write left out."""
    return {result.partition: plan for result in results if (plan := plan_of([result]))}


class Outputs(Protocol):
    """Where a checkpoint writes: the broker (through the producer and the consumer
    group) and the local store."""

    async def send(self, record: Outgoing) -> None:
        """Hand a warning or dead letter to the producer."""

    async def send_change(self, change: Change) -> None:
        """Hand a table change to the producer, for its changelog partition (the
        changelog offset it gets is kept, for :meth:`store_locally`)."""

    async def flush(self) -> None:
        """Until everything handed to the producer is delivered (or raise)."""

    async def commit(self, messages: Sequence[Message]) -> None:
        """Ack the messages and commit the consumer's offsets."""

    def store_locally(self, changes: Sequence[Change]) -> None:
        """Write the changes to the local store, and the changelog offsets they hold."""


class Checkpoint:
    """Runs plans through one :class:`Outputs`, each step after the one before."""

    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs

    async def run(self, plan: Plan) -> None:
        out = self.outputs
        for record in plan.outgoing:
            await out.send(record)
        sent = bool(plan.outgoing)  # something handed to the producer and not flushed yet
        for changes in (plan.states, plan.progress):
            if not changes:
                continue
            if sent:
                await out.flush()  # what this step vouches for is delivered first
            for change in changes:
                await out.send_change(change)
            sent = True
        if sent:
            await out.flush()
        if plan.ackable:
            await out.commit(plan.ackable)
        out.store_locally(plan.states + plan.progress)


class Transaction(Protocol):
    """One input partition's transaction, begun."""

    async def send(self, record: Outgoing) -> None:
        """Hand a warning or dead letter to the transaction."""

    async def send_change(self, change: Change) -> None:
        """Hand a table change to the transaction, for its changelog partition."""

    async def commit(self, messages: Sequence[Message]) -> None:
        """Add the messages' offsets to the transaction and commit it (or raise)."""


class Transactions(Protocol):
    """Where an exactly-once checkpoint writes: a transaction per input partition,
    then the local store."""

    async def begin(self, partition: int) -> Transaction:
        """The partition's transaction (raises where the partition has none)."""

    def store_locally(self, changes: Sequence[Change]) -> None:
        """As :meth:`Outputs.store_locally`, for committed changes."""


class TransactionalCheckpoint:
    """Runs each partition's plan as one transaction, the partitions side by side;
    the local store gets what was committed."""

    def __init__(self, transactions: Transactions) -> None:
        self.transactions = transactions

    async def run(self, plans: dict[int, Plan]) -> None:
        done = await asyncio.gather(
            *(self._commit(partition, plan) for partition, plan in plans.items()),
            return_exceptions=True,
        )
        committed = [
            plan for plan, outcome in zip(plans.values(), done, strict=True) if outcome is None
        ]
        self.transactions.store_locally(
            tuple(change for plan in committed for change in plan.states + plan.progress)
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _commit(self, partition: int, plan: Plan) -> None:
        transaction = await self.transactions.begin(partition)
        for record in plan.outgoing:
            await transaction.send(record)
        for change in plan.states + plan.progress:
            await transaction.send_change(change)
        await transaction.commit(plan.ackable)
