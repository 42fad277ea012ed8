"""Fault injection: ``kill -9`` of a worker mid-history, restart, and nothing differs.

The judge is the batch run of the same history (which the parity tests show
equals an uninterrupted stream): the restarted worker must emit the same
warning episodes (deterministic ids, none lost, none extra; a record sent
again after the restart carries the same id and content) and end with the same
state for every customer.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from churnwatch.core.apache_kafka import ApacheKafkaCluster
from churnwatch.core.broker import free_port, start_child, stop_child
from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS, Topic, committed_offsets
from churnwatch.pipeline.events import WarningRecord
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.integration.conftest import (
    assert_same_as_batch,
    isolated_settings,
    read_topic,
    samples,
    settings_env,
    wait_processed,
)

pytestmark = pytest.mark.integration


def committed(settings: Settings) -> int:
    """Input messages the worker's consumer group has committed, over all partitions."""
    tps = [
        TopicPartition(settings.topic(topic), partition)
        for topic in EVENT_TOPICS
        for partition in range(settings.kafka.partitions)
    ]
    offsets = committed_offsets(settings, settings.worker.app_id, tps)
    return sum(offset or 0 for offset in offsets.values())


def kill_at(settings: Settings, proc, count: int) -> None:
    """SIGKILL the worker once it has committed ``count`` input messages: its state is
    then in the store and the changelog, and more is in flight."""
    deadline = time.monotonic() + 180
    while committed(settings) < count:
        assert proc.poll() is None, "the worker died before it was killed"
        assert time.monotonic() < deadline, f"the worker never committed {count} messages"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_a_worker_killed_mid_history_comes_back_with_the_same_warnings(
    broker, worker, tmp_path, store
):
    """With the default RocksDB store, and with memory:// (the state rebuilt from
    the changelog on every start)."""
    settings = isolated_settings(broker, tmp_path / "worker", store=store)
    events, _ = simulate(200, 11, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    total = len(events)

    proc = worker(settings)
    kill_at(settings, proc, int(total * 0.3))
    proc = worker(settings)  # restarted on the same data folder
    kill_at(settings, proc, int(total * 0.6))  # killed again, later in the history
    done_before = committed(settings)
    started = time.monotonic()
    proc = worker(settings)
    wait_processed(settings, total - done_before, proc, timeout=180)
    print(f"{store}: recovered and drained the rest in {time.monotonic() - started:.1f} s")
    assert_same_as_batch(settings, events)


def crash_then_restart(settings: Settings, worker, tmp_path: Path, step: str, total: int) -> None:
    """Run crashing_worker.py until its 5th checkpoint with warnings dies at ``step``
    (exit 137, mid-history), then a worker on the same data folder to the end."""
    env = dict(
        os.environ,
        **settings_env(settings),
        CHURNWATCH_WORKER__BATCH_SIZE="500",  # many batches: the crash lands mid-history
    )
    crashing = start_child(
        [sys.executable, str(Path(__file__).with_name("crashing_worker.py")), "5", step],
        env=env,
        log=tmp_path / "crash.log",
    )
    try:
        assert crashing.wait(timeout=180) == 137, (tmp_path / "crash.log").read_text()[-3000:]
    finally:
        stop_child(crashing)
    done_before = committed(settings)
    assert done_before < total * 0.9, "crashed too late to test a restart"
    proc = worker(settings)  # restarted on the same data folder
    wait_processed(settings, total - done_before, proc, timeout=180)


@pytest.mark.parametrize("step", ["states", "commit"])
def test_a_worker_that_dies_inside_a_checkpoint_carries_on_after_a_restart(
    broker, worker, tmp_path, step
):
    """The two windows of a kill -9 inside a checkpoint (crashing_worker.py plants
    it): ``states``, its warnings handed to the producer and no state sent (the
    restart must tell them again, or they are lost for good); ``commit``, its
    changelog delivered and its offsets not committed, the local store behind (the
    restart must take the states from the changelog and skip what they hold, or
    it applies events twice)."""
    settings = isolated_settings(broker, tmp_path / "worker", store="rocksdb://")
    events, _ = simulate(200, 11, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    crash_then_restart(settings, worker, tmp_path, step, len(events))
    assert_same_as_batch(settings, events)


def exactly_once_settings(broker, folder: Path) -> Settings:
    if not isinstance(broker, ApacheKafkaCluster):
        pytest.skip("exactly_once needs transactions; the embedded Tansu broker has none")
    return isolated_settings(
        broker, folder, store="rocksdb://", worker={"processing_guarantee": "exactly_once"}
    )


def warning_copies(settings: Settings, committed: bool = True) -> Counter[tuple[str, str, str]]:
    """How many times each warning record (id, status, time) is on the warnings topic."""
    return Counter(
        (record.warning_id, record.status, record.at.isoformat())
        for value in read_topic(settings, Topic.WARNINGS, committed=committed)
        for record in [WarningRecord.model_validate_json(value)]
    )


def test_exactly_once_a_worker_killed_inside_a_transaction_leaves_no_duplicate(
    broker, worker, tmp_path
):
    """Exactly-once mode: the worker dies inside a partition's transaction, its
    warnings and states delivered to the broker and not committed. Read
    committed, the warnings topic holds each record once (the restart aborted
    that transaction and told them again); the broker does hold the aborted
    copies (read uncommitted), so the crash did land where it should."""
    settings = exactly_once_settings(broker, tmp_path / "worker")
    events, _ = simulate(200, 11, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    crash_then_restart(settings, worker, tmp_path, "transaction", len(events))

    copies = warning_copies(settings)
    assert max(copies.values()) == 1, [key for key, n in copies.items() if n > 1][:5]
    aborted = warning_copies(settings, committed=False) - copies
    assert aborted, "the crash left nothing uncommitted on the broker: it tested nothing"
    print(
        f"exactly_once: {sum(copies.values())} warning records read committed, none twice; "
        f"{sum(aborted.values())} aborted copies on the broker"
    )
    assert_same_as_batch(settings, events)


def test_exactly_once_a_worker_killed_twice_mid_history_leaves_no_duplicate(
    broker, worker, tmp_path
):
    """Exactly-once mode, kill -9 at two moments nobody chose (the at-least-once
    mode may repeat the last checkpoint's records): read committed, every warning
    record is on the topic once, and the warnings and states are the batch run's."""
    settings = exactly_once_settings(broker, tmp_path / "worker")
    events, _ = simulate(200, 11, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    total = len(events)
    proc = worker(settings)
    kill_at(settings, proc, int(total * 0.3))
    proc = worker(settings)
    kill_at(settings, proc, int(total * 0.6))
    done_before = committed(settings)
    proc = worker(settings)
    wait_processed(settings, total - done_before, proc, timeout=180)
    copies = warning_copies(settings)
    assert max(copies.values()) == 1, [key for key, n in copies.items() if n > 1][:5]
    assert_same_as_batch(settings, events)


def test_sigterm_mid_history_stops_the_worker_and_a_restart_carries_on(broker, worker, tmp_path):
    """SIGTERM (as systemd, Kubernetes or Ctrl-C stop it) while the worker drains a
    history: it exits cleanly within a few seconds, and a restart finishes the
    history with the warnings and states of an uninterrupted run."""
    settings = isolated_settings(broker, tmp_path / "worker", store="rocksdb://")
    events, _ = simulate(600, 13, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    total = len(events)

    proc = worker(settings)
    deadline = time.monotonic() + 180
    while committed(settings) < total * 0.3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    print(f"stopped {time.monotonic() - asked:.1f} s after SIGTERM")
    done_before = committed(settings)
    assert done_before < total, "stopped too late to test a restart"
    proc = worker(settings)
    wait_processed(settings, total - done_before, proc, timeout=180)
    assert_same_as_batch(settings, events)


def test_the_survivor_of_two_workers_takes_over_and_a_replacement_joins(broker, worker, tmp_path):
    """Two workers share the partitions; one is killed mid-history. The other must
    be given its partitions (after the session timeout), restore their state from
    the changelog and go on; then a replacement joins and takes a share back
    (a rebalance with events held in the reorder buffers). At the end the
    warnings and states are those of an uninterrupted run."""
    settings = isolated_settings(broker, tmp_path / "first", store="rocksdb://")
    other = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"data_dir": str(tmp_path / "second"), "metrics_port": free_port()}
            )
        }
    )
    # Long enough that the survivor is still busy when the replacement joins.
    events, _ = simulate(1500, 12, parse_start("2024-10-07"), 400, 3, 0)
    assert produce(settings, iter_paced(events, 0)).failed == 0
    total = len(events)

    doomed = worker(settings)
    survivor = worker(other)
    kill_at(settings, doomed, int(total * 0.2))
    at_kill = committed_by_partition(settings)
    killed = time.monotonic()
    # Taken over: every partition's input is committed past where it stood at the kill.
    while {
        tp.partition
        for tp, offset in committed_by_partition(settings).items()
        if offset > at_kill[tp]
    } != set(range(settings.kafka.partitions)):
        assert survivor.poll() is None, "the surviving worker died"
        assert time.monotonic() < killed + 120, "no takeover: " + stall_report(settings, other)
        time.sleep(0.2)
    took_over = time.monotonic() - killed
    left = total - committed(settings)
    assert left > total * 0.2, "the survivor finished too soon to test a replacement"

    replacement = worker(settings)  # the killed worker's folder, started again
    deadline = time.monotonic() + 240
    while committed(settings) < total:
        assert survivor.poll() is None and replacement.poll() is None, "a worker died"
        assert time.monotonic() < deadline, "stalled: " + stall_report(settings, other)
        time.sleep(0.2)
    print(
        f"the survivor took over {took_over:.1f} s after the kill; with the replacement "
        f"the last {left} of {total} messages were done {time.monotonic() - killed:.1f} s "
        "after the kill"
    )
    assert_same_as_batch(settings, events)


def committed_by_partition(settings: Settings) -> dict[TopicPartition, int]:
    tps = [
        TopicPartition(settings.topic(topic), partition)
        for topic in EVENT_TOPICS
        for partition in range(settings.kafka.partitions)
    ]
    offsets = committed_offsets(settings, settings.worker.app_id, tps)
    return {tp: offset or 0 for tp, offset in offsets.items()}


def end_offsets(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The broker's answer (the embedded broker's can be short of the true end)."""
    consumer = KafkaConsumer(group_id=None, **settings.kafka_client_options())
    try:
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def stall_report(settings: Settings, survivor: Settings) -> str:
    """What a stalled test saw: committed offsets per partition and the survivor's
    own view (lag, events waiting)."""
    now = committed_by_partition(settings)
    ends = end_offsets(settings, list(now))
    lines = [f"{tp.topic}[{tp.partition}] committed {now[tp]} of {ends[tp]}" for tp in now]
    port = survivor.worker.metrics_port
    for name in ("churnwatch_consumer_lag_messages", "churnwatch_events_waiting"):
        try:
            lines += [f"survivor {name}{labels} {value}" for labels, value in samples(port, name)]
        except OSError as exc:
            lines.append(f"survivor metrics: {exc}")
    return "\n".join(lines)
