"""The worker's partition task with no broker, as Kafka Streams' TopologyTestDriver
drives a topology: an in-memory log of the input topics, fetches that interleave
the topics as a consumer's do (read ahead, paused, resumed), and an in-memory
store that keeps what each fetch's result says to store, and commits what it
says may be acked. The stream must come out as the batch run over the same
history, and a restart from what was stored, at any fetch, must lose nothing
and apply nothing twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faust.types import Message

from churnwatch.core.settings import Settings, load_settings
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import WarningRecord, decode_event
from churnwatch.pipeline.partition_task import PartitionTask, Wiring
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.progress import read_floor_key
from churnwatch.pipeline.scoring import ModelHolder
from churnwatch.pipeline.state import StateBlock
from churnwatch.pipeline.state_format import decode_state
from churnwatch.producers.simulator import parse_start, simulate
from tests.factories import assert_same_states


class Table(dict[str, Any]):
    """An in-memory table: what PartitionProgress reads (``get`` and ``data``)."""

    @property
    def data(self) -> Table:
        return self


@dataclass
class Stored:
    """What a store kept: the states, the sweep progress and read floors, the
    committed offsets and the warnings sent."""

    states: dict[str, bytes] = field(default_factory=dict)
    progress: Table = field(default_factory=Table)
    committed: dict[str, int] = field(default_factory=dict)
    warnings: list[WarningRecord] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    #: The committed offsets before the last store's commit.
    committed_before: dict[str, int] = field(default_factory=dict)

    def keep(self, task: PartitionTask) -> None:
        result = task.take_result()
        self.committed_before = dict(self.committed)
        for topic, _key, value in result.outgoing:
            if topic is Topic.WARNINGS:
                self.warnings.append(WarningRecord.model_validate_json(value))
            else:
                self.dead_letters.append(value)
        self.states.update(result.states)
        if result.swept is not None:
            self.progress[str(result.partition)] = result.swept
        for name, offset in (result.floors_again or {}).items():
            self.progress[read_floor_key(name, result.partition)] = float(offset)
        for message in result.ackable:  # in offset order: the last one of each topic wins
            self.progress[read_floor_key(message.topic, 0)] = float(message.offset + 1)
            self.committed[message.topic] = message.offset + 1


FETCH_SECONDS = 0.1


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

    def read(
        self, task: PartitionTask, starts: dict[str, int], fetch: int, stored: Stored
    ) -> Iterator[int]:
        """Read from ``starts`` to the end of every topic, a fetch at a time (each
        topic a random share of it, as a consumer's round robin gives), storing in
        ``stored`` after each; yields the fetch's number."""
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
            stored.keep(task)
            number += 1
            yield number
        # Read to the end: the worker's fetches come back empty and it moves the
        # clock once the topics have been idle long enough (TrackCustomers.idle).
        while task.holding():
            self.now += FETCH_SECONDS
            task.on_tick(0.0)
            stored.keep(task)
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


def new_task(settings: Settings, log: Log, stored: Stored, tmp_path: Path) -> PartitionTask:
    wiring = Wiring(
        settings, ModelHolder(tmp_path / "no-registry"), log.end, lambda *a: None, lambda: log.now
    )
    task = PartitionTask(0, wiring, stored.states.values(), stored.progress)
    task.start({name: stored.committed.get(name) for name in wiring.input_names})
    return task


def drive(
    settings: Settings,
    log: Log,
    tmp_path: Path,
    fetch: int,
    crash_at: set[int],
    commit_lost: bool = False,
) -> tuple[Stored, int]:
    """Read the whole log; after each fetch number in ``crash_at`` the worker dies
    (the events it held unacked die with it), and a new one starts from what was
    stored, reading again from the committed offsets. ``commit_lost``: it died
    after that fetch's states and read floors were stored but before its offsets
    were committed (so what it applied is read again)."""
    stored = Stored()
    restarts = fetches = 0
    while True:
        task = new_task(settings, log, stored, tmp_path)
        for _ in log.read(task, dict(stored.committed), fetch, stored):
            fetches += 1
            if fetches in crash_at:
                restarts += 1
                if commit_lost:
                    stored.committed = stored.committed_before
                break
        else:
            return stored, restarts


def states_of(stored: Stored) -> StateBlock:
    block = StateBlock()
    for value in stored.states.values():
        decode_state(value, block)
    return block


def assert_same_as_batch(settings: Settings, events: list[Any], stored: Stored) -> None:
    block, batch = run_history([decode_event(e.payload) for e in events], settings.warnings, 86_400)
    streamed: dict[tuple[Any, ...], WarningRecord] = {}
    for w in stored.warnings:  # sent again after a restart: the same record (at least once)
        assert streamed.setdefault((w.warning_id, w.status, w.at), w) == w
    expected = {(w.warning_id, w.status, w.at): w for w in batch}
    assert sorted(streamed) == sorted(expected)
    assert streamed == expected
    assert_same_states(states_of(stored), block)


@pytest.fixture(scope="module")
def history():
    events, _ = simulate(40, 5, parse_start("2024-10-07"), 400, 3, 0)
    return events


@pytest.mark.parametrize("fetch, seed", [(50, 1), (400, 2), (3000, 3)])
def test_the_stream_through_the_task_is_the_batch_run(history, tmp_path, fetch, seed):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 500})
    log = Log(settings, history, seed)
    stored, _ = drive(settings, log, tmp_path, fetch, set())
    assert_same_as_batch(settings, history, stored)


@pytest.mark.parametrize("commit_lost", [False, True])
@pytest.mark.parametrize(
    "crash_at, fetch",
    # the last: more of a customer's events read again than its ring of recent event
    # ids holds, so only the floors and stream positions can tell what was applied
    [({3}, 300), ({2, 9}, 300), ({5, 6, 7, 20}, 300), ({2}, 1500)],
)
def test_a_restart_from_what_was_stored_loses_nothing_and_applies_nothing_twice(
    history, tmp_path, crash_at, fetch, commit_lost
):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    stored, restarts = drive(
        settings, Log(settings, history, 7), tmp_path, fetch, crash_at, commit_lost
    )
    assert restarts == len(crash_at)
    # what was held is applied once, after the restart; what was applied and is read
    # again (its commit lost) is recognised by the read floors and the records'
    # stream positions: never applied twice, nor taken for a copy
    assert_same_as_batch(settings, history, stored)
    assert stored.dead_letters == []


def test_acks_never_pass_an_event_still_held(history, tmp_path):
    """With topics a little out of event-time order, events after a held one finish
    first; the commit must still wait for the held one."""
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 500})
    log = Log(settings, history, 11, swaps=0.3)
    stored = Stored()
    task = new_task(settings, log, stored, tmp_path)
    holding = 0
    for _ in log.read(task, {}, 200, stored):
        held = [entry[2][1] for entry in task.sequencer.buffer._heaps.get(0, [])]
        holding = max(holding, len(held))
        for message in held:
            assert stored.committed.get(message.topic, 0) <= message.offset
    assert holding > 0  # (events did wait: the check had something to check)
