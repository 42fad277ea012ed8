"""The checkpoint with no broker (tests/unit/runtime_driver.py): its steps in
quix-streams' order, and a worker killed at every step of a checkpoint, once or
several times in a history, that loses nothing and applies nothing twice. The
only duplicates allowed are the at-least-once window's: a warning delivered
again after a restart, always the same record (the dispatcher keeps one). In
exactly-once mode (each checkpoint a transaction) there is none."""

from __future__ import annotations

import random

import pytest
from faust.types import Message

from churnwatch.core.settings import load_settings
from churnwatch.core.topics import Topic
from churnwatch.pipeline.checkpoint import (
    PROGRESS,
    STATES,
    Checkpoint,
    Plan,
    TransactionalCheckpoint,
    plan_of,
)
from churnwatch.pipeline.partition_task import FetchResult
from churnwatch.producers.simulator import parse_start, simulate
from tests.unit.runtime_driver import (
    Broker,
    CrashPoint,
    LocalStore,
    Log,
    MemoryOutputs,
    MemoryTransactions,
    assert_same_as_batch,
    drive,
)

WARNING = b'{"not": "read here"}'


def fetch_result(partition: int, offsets: list[int]) -> FetchResult:
    messages = tuple(
        Message("orders", partition, o, 0.0, 0, None, b"k", b"v", None) for o in offsets
    )
    return FetchResult(
        partition,
        ((Topic.DEAD_LETTERS, b"k", WARNING),),
        (("C1", b"state-1"), ("C2", b"state-2")),
        86_400.0,
        messages,
    )


def test_a_plan_holds_the_states_then_the_progress_they_vouch_for():
    plan = plan_of([fetch_result(0, [4, 5, 6]), fetch_result(1, [9])])
    assert [(c.key, c.partition) for c in plan.states] == [
        ("C1", 0),
        ("C2", 0),
        ("C1", 1),
        ("C2", 1),
    ]
    # each partition's last sweep, and the read floor after its newest acked message
    assert {(c.key, c.value) for c in plan.progress} == {
        ("0", 86_400.0),
        ("1", 86_400.0),
        ("read:orders:0", 7.0),
        ("read:orders:1", 10.0),
    }
    assert [m.offset for m in plan.ackable] == [4, 5, 6, 9]
    assert not Plan((), (), (), ())


async def test_everything_reaches_the_broker_before_the_commit_and_the_local_store_last():
    broker, local = Broker(), LocalStore()
    outputs = MemoryOutputs(broker, local, random.Random(0))
    await Checkpoint(outputs).run(plan_of([fetch_result(0, [4, 5])]))
    assert outputs.steps == [
        "send",
        "flush",  # the warnings and dead letters first: a state never says "told" too soon
        "send_change",
        "send_change",
        "flush",  # the states
        "send_change",
        "send_change",
        "flush",  # the progress, after the states it vouches for
        "commit",
        "store_locally",
    ]
    assert broker.committed == {"orders": 6}
    assert dict(broker.changelogs[STATES]) == {"C1": b"state-1", "C2": b"state-2"}
    assert local.tables[STATES] == {"C1": b"state-1", "C2": b"state-2"}
    assert local.tables[PROGRESS] == {"0": 86_400.0, "read:orders:0": 6.0}
    assert local.holds_to == {STATES: 2, PROGRESS: 2}  # recovery reads on from here


async def test_a_crash_before_the_local_store_leaves_the_changelog_to_recover_from():
    broker, local = Broker(), LocalStore()
    outputs = MemoryOutputs(broker, local, random.Random(0))
    outputs.crash = CrashPoint(1, "store_locally")
    with pytest.raises(Exception, match="store_locally"):
        await Checkpoint(outputs).run(plan_of([fetch_result(0, [4, 5])]))
    assert local.holds_to == {STATES: 0, PROGRESS: 0}  # (half written, its offsets not)
    local.recover(broker)
    assert local.tables[STATES] == {"C1": b"state-1", "C2": b"state-2"}


@pytest.fixture(scope="module")
def history():
    events, _ = simulate(40, 5, parse_start("2024-10-07"), 400, 3, 0)
    return events


#: Every step of a checkpoint (the number: which call of it within the checkpoint).
STEPS = [
    ("send", 1),  # before any warning is handed to the producer
    ("send", 3),  # some warnings handed over, none delivered
    ("flush", 1),  # the warnings partly delivered
    ("send_change", 1),  # the warnings delivered, no state sent
    ("send_change", 15),  # some states handed over
    ("flush", 2),  # the states partly delivered, the progress not sent
    ("flush", 3),  # the states delivered, the progress partly
    ("commit", 1),  # everything delivered, the offsets not committed
    ("store_locally", 1),  # committed, the local store half written
]


@pytest.mark.parametrize("step, calls", STEPS)
@pytest.mark.parametrize(
    "fetch, checkpoints",
    # large fetches: more of a customer's events read again than its ring of recent
    # event ids holds, so only the records' stream positions tell what was applied
    [(100, (4, 15, 30)), (1500, (2,))],
)
async def test_a_worker_killed_at_this_step_loses_nothing_and_applies_nothing_twice(
    history, tmp_path, step, calls, fetch, checkpoints
):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    crashes = [CrashPoint(n, step, calls) for n in checkpoints]
    run = await drive(settings, Log(settings, history, 7), tmp_path, fetch, crashes, seed=3)
    assert run.restarts == len(checkpoints)
    assert_same_as_batch(settings, history, run)
    assert run.broker.dead_letters == []  # nothing read again was taken for a copy


async def test_a_worker_killed_at_random_steps_many_times_ends_as_the_batch_run(history, tmp_path):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    rng = random.Random(17)
    crashes = [CrashPoint(n, *rng.choice(STEPS)) for n in sorted(rng.sample(range(2, 100), 12))]
    run = await drive(settings, Log(settings, history, 9), tmp_path, 50, crashes, seed=5)
    assert run.restarts == 12
    assert_same_as_batch(settings, history, run)
    assert run.broker.dead_letters == []


#: Every step of a transactional checkpoint.
TRANSACTION_STEPS = [
    ("begin", 1),  # nothing sent
    ("send", 2),  # some warnings in the transaction
    ("send_change", 10),  # the warnings and some states in it
    ("commit", 1),  # everything in it, not committed
    ("store_locally", 1),  # committed, the local store half written
]


async def test_a_transactional_checkpoint_is_begun_filled_and_committed_then_stored():
    broker, local = Broker(), LocalStore()
    outputs = MemoryTransactions(broker, local, random.Random(0))
    await TransactionalCheckpoint(outputs).run({0: plan_of([fetch_result(0, [4, 5])])})
    assert outputs.steps == ["begin", "send", *["send_change"] * 4, "commit", "store_locally"]
    assert broker.committed == {"orders": 6}
    assert local.tables[STATES] == {"C1": b"state-1", "C2": b"state-2"}
    assert local.holds_to == {STATES: 2, PROGRESS: 2}


async def test_a_transaction_that_fails_stores_nothing_of_its_partition_and_raises():
    broker, local = Broker(), LocalStore()
    outputs = MemoryTransactions(broker, local, random.Random(0))
    outputs.crash = CrashPoint(1, "commit")
    with pytest.raises(Exception, match="commit"):
        await TransactionalCheckpoint(outputs).run({0: plan_of([fetch_result(0, [4, 5])])})
    assert broker.committed == {} and broker.dead_letters == []  # (never committed)
    assert broker.changelogs[STATES] == [] and local.tables[STATES] == {}


@pytest.mark.parametrize("step, calls", TRANSACTION_STEPS)
async def test_exactly_once_a_worker_killed_at_this_step_delivers_each_warning_once(
    history, tmp_path, step, calls
):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    crashes = [CrashPoint(n, step, calls) for n in (4, 15, 30)]
    log = Log(settings, history, 7)
    run = await drive(settings, log, tmp_path, 100, crashes, seed=3, exactly_once=True)
    assert run.restarts == 3
    assert_same_as_batch(settings, history, run, exactly_once=True)
    assert run.broker.dead_letters == []


async def test_exactly_once_random_kills_deliver_each_warning_once_where_at_least_once_repeats(
    history, tmp_path
):
    """The same 30 kills at random steps: at least once, some warnings are delivered
    twice (the window exists on this schedule); each checkpoint a transaction, none."""
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    delivered = {}
    for exactly_once, steps in ((False, STEPS), (True, TRANSACTION_STEPS)):
        rng = random.Random(17)
        kills = [CrashPoint(n, *rng.choice(steps)) for n in sorted(rng.sample(range(2, 100), 30))]
        log = Log(settings, history, 9)
        run = await drive(settings, log, tmp_path, 50, kills, seed=5, exactly_once=exactly_once)
        assert run.restarts == 30
        assert_same_as_batch(settings, history, run, exactly_once=exactly_once)
        delivered[exactly_once] = len(run.broker.warnings)
    assert delivered[False] > delivered[True]
