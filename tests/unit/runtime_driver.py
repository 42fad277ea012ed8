"""The worker's runtime with no broker, as Kafka Streams' TopologyTestDriver drives
a topology: an in-memory log of the input topics and a consumer reading it a
fetch at a time (:class:`Log`), an in-memory broker and local store behind the
real :class:`~pipeline.checkpoint.Checkpoint` (:class:`MemoryOutputs`), and a
worker that can die anywhere inside a checkpoint and restart from what the
broker and its local store kept (:func:`drive`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from faust.types import Message

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic
from churnwatch.pipeline.checkpoint import (
    PROGRESS,
    STATES,
    Change,
    Checkpoint,
    TransactionalCheckpoint,
    plan_of,
)
from churnwatch.pipeline.events import WarningRecord, decode_event
from churnwatch.pipeline.partition_task import PartitionTask, Wiring
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.progress import Outgoing
from churnwatch.pipeline.scoring import ModelHolder
from churnwatch.pipeline.state import StateBlock
from churnwatch.pipeline.state_format import decode_state
from tests.factories import assert_same_states

FETCH_SECONDS = 0.1


class Table(dict[str, Any]):
    """An in-memory table: what PartitionProgress reads (``get`` and ``data``)."""

    @property
    def data(self) -> Table:
        return self


class Crash(Exception):
    """The worker died (kill -9) inside a checkpoint."""


@dataclass
class Broker:
    """What survives the worker: the topics' records as delivered, each changelog
    as a log (so recovery can read it on from an offset) and the committed offsets."""

    warnings: list[WarningRecord] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    health: list[bytes] = field(default_factory=list)  # the account feed's band changes
    changelogs: dict[str, list[tuple[str, Any]]] = field(
        default_factory=lambda: {STATES: [], PROGRESS: []}
    )
    committed: dict[str, int] = field(default_factory=dict)


@dataclass
class LocalStore:
    """The worker's local store: the tables and, per table, the offset after the
    last changelog record it holds."""

    tables: dict[str, Table] = field(default_factory=lambda: {STATES: Table(), PROGRESS: Table()})
    holds_to: dict[str, int] = field(default_factory=lambda: {STATES: 0, PROGRESS: 0})

    def recover(self, broker: Broker) -> None:
        """What Faust's table recovery does at a start: read each changelog on from
        the offset the store holds."""
        for name, log in broker.changelogs.items():
            for key, value in log[self.holds_to[name] :]:
                self.tables[name][key] = value
            self.holds_to[name] = len(log)


@dataclass
class CrashPoint:
    """Where the worker dies: in its ``checkpoint``-th checkpoint or the first after it
    that gets that far, at call number ``calls`` (1 = the first) of the Outputs
    method ``step`` within the checkpoint."""

    checkpoint: int
    step: str
    calls: int = 1


class MemoryOutputs:
    """:class:`pipeline.checkpoint.Outputs` on the in-memory broker and local store.

    What is handed to the producer waits in its buffer until a flush; when the
    worker dies, a random prefix of the buffer has been delivered (a producer
    delivers a partition's records in order) and the rest is lost."""

    def __init__(self, broker: Broker, local: LocalStore, rng: random.Random) -> None:
        self.broker, self.local, self.rng = broker, local, rng
        self.buffer: list[tuple[str, Any]] = []
        self.delivered: dict[str, int] = {}
        self.crash: CrashPoint | None = None
        self.calls: dict[str, int] = {}
        self.steps: list[str] = []  # the steps called, in order (for the tests' own checks)

    def _step(self, name: str) -> None:
        self.steps.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        crash = self.crash
        if crash is not None and crash.step == name and self.calls[name] == crash.calls:
            self._deliver(self._delivered_at_death())
            raise Crash(f"{name} #{self.calls[name]}")

    def _delivered_at_death(self) -> int:
        """How much of the buffer reaches the broker when the worker dies."""
        return self.rng.randint(0, len(self.buffer))

    def _deliver(self, count: int) -> None:
        for where, record in self.buffer[:count]:
            if where == Topic.WARNINGS.value:
                self.broker.warnings.append(WarningRecord.model_validate_json(record[1]))
            elif where == Topic.DEAD_LETTERS.value:
                self.broker.dead_letters.append(record[1])
            elif where == Topic.HEALTH.value:
                self.broker.health.append(record[1])
            else:
                log = self.broker.changelogs[where]
                log.append(record)
                self.delivered[where] = len(log)
        del self.buffer[:count]

    async def send(self, record: Outgoing) -> None:
        self._step("send")
        topic, key, value = record
        self.buffer.append((topic.value, (key, value)))

    async def send_change(self, change: Change) -> None:
        self._step("send_change")
        self.buffer.append((change.table, (change.key, change.value)))

    async def flush(self) -> None:
        self._step("flush")
        self._deliver(len(self.buffer))

    async def commit(self, messages: Sequence[Message]) -> None:
        self._step("commit")
        for message in messages:
            self.broker.committed[message.topic] = message.offset + 1

    def store_locally(self, changes: Sequence[Change]) -> None:
        for i, change in enumerate(changes):
            if i == len(changes) // 2:
                self._step("store_locally")  # (dying here leaves half the writes done)
            self.local.tables[change.table][change.key] = change.value
        if not changes:
            self._step("store_locally")
        self.local.holds_to.update(self.delivered)
        self.delivered.clear()


class MemoryTransactions(MemoryOutputs):
    """:class:`pipeline.checkpoint.Transactions` (and the one partition's
    :class:`~pipeline.checkpoint.Transaction`) on the in-memory broker: what is
    sent waits in the open transaction and reaches the broker's logs at the
    commit, all of it, with the offsets. A worker that dies leaves its
    transaction open; the partition's next producer aborts it, and a reader
    reading committed never sees its records (so none is delivered here)."""

    async def begin(self, partition: int) -> MemoryTransactions:
        self._step("begin")
        return self

    async def commit(self, messages: Sequence[Message]) -> None:
        self._step("commit")
        self._deliver(len(self.buffer))
        for message in messages:
            self.broker.committed[message.topic] = message.offset + 1

    def _delivered_at_death(self) -> int:
        return 0


class Log:
    """The input topics of partition 0, and a consumer reading them a fetch at a time."""

    def __init__(
        self, settings: Settings, events: list[Any], seed: int, swaps: float = 0.0
    ) -> None:
        """``swaps``: the share of neighbouring events of a topic written in the
        wrong order (a topic out of event-time order)."""
        self.rng = random.Random(seed)
        self.now = 0.0  # the worker's monotonic clock: a fetch takes FETCH_SECONDS
        by_topic: dict[str, list[Any]] = {}
        for event in events:
            by_topic.setdefault(settings.topic(event.topic), []).append(event)
        self.topics: dict[str, list[Message]] = {}
        for name, listed in by_topic.items():
            for i in range(len(listed) - 1):
                if self.rng.random() < swaps:
                    listed[i], listed[i + 1] = listed[i + 1], listed[i]
            self.topics[name] = [
                Message(name, 0, offset, 0.0, 0, None, e.key.encode(), e.payload, None)
                for offset, e in enumerate(listed)
            ]

    def end(self, topic: str, partition: int) -> int | None:
        return len(self.topics.get(topic, ()))

    def read(self, task: PartitionTask, starts: dict[str, int], fetch: int) -> Iterator[int]:
        """Read from ``starts`` to the end of every topic, a fetch at a time (each
        topic a random share of it, as a consumer's round robin gives); yields the
        fetch's number after the task has worked on it (the caller checkpoints)."""
        position = dict(starts)
        paused: set[str] = set()
        number = 0
        while any(position.get(t, 0) < len(m) for t, m in self.topics.items()):
            batch: list[Message] = []
            for name, messages in self.topics.items():
                if name in paused:
                    continue
                at = position.get(name, 0)
                take = self.rng.randint(0, fetch)
                batch += messages[at : at + take]
                position[name] = min(len(messages), at + take)
            self.now += FETCH_SECONDS
            self.process(task, batch)
            stop, go = task.pace()
            paused = (paused | {topic for topic, _ in stop}) - {topic for topic, _ in go}
            if not batch and paused:
                paused.clear()  # (a consumer resumes once the watermark catches up)
            number += 1
            yield number
        # Read to the end: the worker's fetches come back empty and it moves the
        # clock once the topics have been idle long enough (TrackCustomers.idle).
        while task.holding():
            self.now += FETCH_SECONDS
            task.on_tick(0.0)
            number += 1
            yield number

    @staticmethod
    def process(task: PartitionTask, batch: list[Message]) -> None:
        """What the worker does with a fetch (pipeline.track_customers)."""
        touched = False
        for message in batch:
            if task.read_again(message):
                continue
            touched = True
            task.on_event(message, 0.0)
        if touched and task.due:
            task.on_tick(0.0)
        if task.holding():
            task.on_tick(0.0)


@dataclass
class Run:
    """What a driven run left: the broker, the local store, how often the worker
    died, and the steps of every checkpoint called."""

    broker: Broker
    local: LocalStore
    restarts: int
    steps: list[str]


def new_task(settings: Settings, log: Log, local: LocalStore, broker: Broker, tmp: Path) -> Any:
    wiring = Wiring(
        settings, ModelHolder(tmp / "no-registry"), log.end, lambda *a: None, lambda: log.now
    )
    local.recover(broker)
    task = PartitionTask(0, wiring, local.tables[STATES].values(), local.tables[PROGRESS])
    task.start({name: broker.committed.get(name) for name in wiring.input_names})
    return task


async def drive(
    settings: Settings,
    log: Log,
    tmp: Path,
    fetch: int,
    crashes: Sequence[CrashPoint] = (),
    seed: int = 0,
    exactly_once: bool = False,
) -> Run:
    """Read the whole log, a checkpoint after each fetch. At each crash point the
    worker dies (what it held in memory, and what its producer had not delivered,
    die with it); a new one starts from what the broker and the local store kept,
    reading again from the committed offsets. ``exactly_once``: each checkpoint
    is a transaction (:class:`MemoryTransactions`)."""
    broker, local = Broker(), LocalStore()
    rng = random.Random(seed)
    pending = sorted(crashes, key=lambda c: c.checkpoint)
    checkpoints = restarts = 0
    steps: list[str] = []
    while True:
        task = new_task(settings, log, local, broker, tmp)
        outputs = (MemoryTransactions if exactly_once else MemoryOutputs)(broker, local, rng)
        checkpoint = Checkpoint(outputs)
        transactional = TransactionalCheckpoint(cast(MemoryTransactions, outputs))
        try:
            for _ in log.read(task, dict(broker.committed), fetch):
                plan = plan_of([task.take_result()])
                if not plan:
                    continue
                checkpoints += 1
                outputs.calls.clear()
                if outputs.crash is None and pending and pending[0].checkpoint <= checkpoints:
                    outputs.crash = pending.pop(0)  # (armed until it fires)
                if exactly_once:
                    await transactional.run({0: plan})
                else:
                    await checkpoint.run(plan)
        except Crash:
            restarts += 1
            steps += outputs.steps
            continue
        steps += outputs.steps
        return Run(broker, local, restarts, steps)


def states_of(values: Any) -> StateBlock:
    block = StateBlock()
    for value in values:
        decode_state(value, block)
    return block


def assert_same_as_batch(
    settings: Settings, events: list[Any], run: Run, exactly_once: bool = False
) -> None:
    """The warnings delivered (each at least once, always the same record; each
    exactly once with ``exactly_once``) and the states on the broker and in the
    local store are the batch run's."""
    block, batch = run_history([decode_event(e.payload) for e in events], settings.warnings, 86_400)
    streamed: dict[tuple[Any, ...], WarningRecord] = {}
    for w in run.broker.warnings:  # sent again after a restart: the same record (at least once)
        assert streamed.setdefault((w.warning_id, w.status, w.at), w) == w
    expected = {(w.warning_id, w.status, w.at): w for w in batch}
    if exactly_once:
        assert len(run.broker.warnings) == len(streamed), "a warning delivered twice"
    assert sorted(streamed) == sorted(expected)
    assert streamed == expected
    assert_same_states(states_of(run.local.tables[STATES].values()), block)
    on_broker: dict[str, bytes] = dict(run.broker.changelogs[STATES])  # (compacted)
    assert_same_states(states_of(on_broker.values()), block)
