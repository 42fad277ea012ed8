"""The worker's partition task with no broker (tests/unit/runtime_driver.py): the
stream through it must come out as the batch run over the same history, however
the topics interleave and however often it is restarted between checkpoints."""

from __future__ import annotations

import pytest

from churnwatch.core.settings import load_settings
from churnwatch.producers.simulator import parse_start, simulate
from tests.unit.runtime_driver import (
    Broker,
    CrashPoint,
    LocalStore,
    Log,
    assert_same_as_batch,
    drive,
    new_task,
)


@pytest.fixture(scope="module")
def history():
    events, _ = simulate(40, 5, parse_start("2024-10-07"), 400, 3, 0)
    return events


@pytest.mark.parametrize("fetch, seed", [(50, 1), (400, 2), (3000, 3)])
async def test_the_stream_through_the_task_is_the_batch_run(history, tmp_path, fetch, seed):
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 500})
    run = await drive(settings, Log(settings, history, seed), tmp_path, fetch)
    assert run.restarts == 0
    assert_same_as_batch(settings, history, run)


@pytest.mark.parametrize(
    "checkpoints, fetch",
    # the last: more of a customer's events read again than its ring of recent event
    # ids holds, so only the read floors and stream positions can tell what was applied
    [([3], 300), ([2, 9], 300), ([5, 6, 7, 20], 300), ([2], 1500)],
)
async def test_a_restart_between_a_commit_and_the_local_store_applies_nothing_twice(
    history, tmp_path, checkpoints, fetch
):
    """Each time, the checkpoint's changelog is delivered and its offsets committed,
    and the worker dies before its local store is written: the restart takes the
    states from the changelog and reads on from the commit. What was held (never
    acked) is applied once, after the restart; what was applied and is read again
    is recognised by the read floors and the records' stream positions: never
    applied twice, nor taken for a copy."""
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 5000})
    crashes = [CrashPoint(n, "store_locally") for n in checkpoints]
    run = await drive(settings, Log(settings, history, 7), tmp_path, fetch, crashes)
    assert run.restarts == len(checkpoints)
    assert_same_as_batch(settings, history, run)
    assert run.broker.dead_letters == []


def test_acks_never_pass_an_event_still_held(history, tmp_path):
    """With topics a little out of event-time order, events after a held one finish
    first; the ack must still wait for the held one."""
    settings = load_settings(kafka={"partitions": 1}, worker={"max_waiting_events": 500})
    log = Log(settings, history, 11, swaps=0.3)
    broker, local = Broker(), LocalStore()
    task = new_task(settings, log, local, broker, tmp_path)
    holding = 0
    acked: dict[str, int] = {}
    for _ in log.read(task, {}, 200):
        for message in task.take_result().ackable:
            acked[message.topic] = message.offset + 1
        held = [entry[2][1] for entry in task.sequencer.buffer._heaps.get(0, [])]
        holding = max(holding, len(held))
        for message in held:
            assert acked.get(message.topic, 0) <= message.offset
    assert holding > 0  # (events did wait: the check had something to check)
