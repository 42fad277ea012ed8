"""A real Kafka-protocol broker for the whole session, and workers per test."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from churnwatch.consumers.consistency import live_states
from churnwatch.core.apache_kafka import ApacheKafkaCluster, ApacheKafkaUnavailable
from churnwatch.core.broker import EmbeddedBroker, free_port, start_child, stop_child
from churnwatch.core.settings import Settings, load_settings
from churnwatch.core.topics import Topic, end_offsets, ensure_topics
from churnwatch.demo.tally import events_processed
from churnwatch.pipeline.events import WarningRecord, decode_event
from churnwatch.pipeline.processing import run_history
from churnwatch.producers.simulator import SimEvent
from tests.conftest import BROKERS, TANSU
from tests.factories import assert_same_states

Broker = EmbeddedBroker | ApacheKafkaCluster


@pytest.fixture(scope="session", params=BROKERS)
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """Each broker test runs on the embedded Tansu broker and on a one-node Apache
    Kafka (the compose file's version); the Apache Kafka runs are skipped, with the
    reason, where Java or the jars cannot be had."""
    if request.param == TANSU:
        with EmbeddedBroker("127.0.0.1", free_port(), startup_timeout=30) as running:
            yield running
        return
    cluster = start_apache_kafka(tmp_path_factory.mktemp("apache-kafka"), nodes=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def start_apache_kafka(folder: Path, nodes: int) -> ApacheKafkaCluster:
    try:
        return ApacheKafkaCluster(folder, nodes=nodes).start()
    except ApacheKafkaUnavailable as exc:
        pytest.skip(f"Apache Kafka cannot run here: {exc}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    return {
        "CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CHURNWATCH_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CHURNWATCH_KAFKA__REPLICATION_FACTOR": str(settings.kafka.replication_factor),
        "CHURNWATCH_WORKER__APP_ID": settings.worker.app_id,
        "CHURNWATCH_WORKER__STORE": settings.worker.store,
        "CHURNWATCH_WORKER__DATA_DIR": settings.worker.data_dir,
        "CHURNWATCH_WORKER__METRICS_PORT": str(settings.worker.metrics_port),
        "CHURNWATCH_WORKER__PROCESSING_GUARANTEE": settings.worker.processing_guarantee,
        "CHURNWATCH_CLOCK__MODE": settings.clock.mode,
        "CHURNWATCH_CLOCK__WALL_TICK_SECONDS": str(settings.clock.wall_tick_seconds),
        "CHURNWATCH_CLOCK__SWEEP_EVERY_HOURS": str(settings.clock.sweep_every_hours),
        "CHURNWATCH_CLOCK__ALLOWED_LATENESS_HOURS": str(settings.clock.allowed_lateness_hours),
        "CHURNWATCH_CLOCK__IDLE_TOPIC_WAIT_SECONDS": str(settings.clock.idle_topic_wait_seconds),
        "CHURNWATCH_MODEL__REGISTRY": settings.model.registry,
        "CHURNWATCH_MODEL__RELOAD_SECONDS": str(settings.model.reload_seconds),
    }


def isolated_settings(
    broker: Broker, data_dir: Path, store: str = "memory://", **overrides: Any
) -> Settings:
    """Settings with a unique topic prefix and consumer group, topics created."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "topic_prefix": prefix,
            **overrides.pop("kafka", {}),
        },
        worker={
            "app_id": f"cw-{prefix}",
            "store": store,
            "data_dir": str(data_dir),
            "metrics_port": free_port(),
            **overrides.pop("worker", {}),
        },
        **overrides,
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def stream_settings(broker: Broker, tmp_path: Path) -> Settings:
    """Settings with a unique topic prefix and consumer group for this test."""
    return isolated_settings(broker, tmp_path / "worker")


@pytest.fixture
def worker(stream_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``churnwatch worker`` (with ``stream_settings`` unless given others) as a
    real child process; stopped after the test."""
    procs = []
    log = tmp_path / "worker.log"

    def start(settings: Settings | None = None) -> Any:
        env = dict(os.environ, **settings_env(settings or stream_settings))
        proc = start_child([sys.executable, "-m", "churnwatch.cli", "worker"], env=env, log=log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_child(proc)
    if any(p.returncode not in (0, -15) for p in procs):
        print(log.read_text(errors="replace")[-4000:])


def produce_raw(settings: Settings, messages: list[tuple[Topic, str, bytes]]) -> None:
    producer = KafkaProducer(**settings.kafka_client_options())
    for topic, key, value in messages:
        producer.send(settings.topic(topic), key=key.encode(), value=value)
    producer.flush()
    producer.close()


def read_topic(settings: Settings, topic: Topic, committed: bool = True) -> list[bytes]:
    """Everything on ``topic`` right now: read committed (as every churnwatch consumer
    reads), or every record the broker holds, those of aborted transactions too."""
    options = settings.kafka_consumer_options()
    if not committed:
        options["isolation_level"] = "read_uncommitted"
    consumer = KafkaConsumer(group_id=None, **options)
    name = settings.topic(topic)
    tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = end_offsets(settings, tps)
    out: list[bytes] = []
    deadline = time.monotonic() + 20
    while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300).values():
            out.extend(m.value for m in batch)
    consumer.close()
    return out


def wait_processed(settings: Settings, count: int, proc: Any, timeout: float = 120) -> None:
    """Until the worker has consumed ``count`` event messages and holds none of them
    back (the event clock releases the last ones once their topics have been idle
    for clock.idle_topic_wait_seconds), then a moment to flush."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker died"
        seen = events_processed(settings.worker.metrics_port)
        if seen is not None and seen >= count and not events_waiting(settings):
            time.sleep(2)  # let the last sends reach the broker
            return
        time.sleep(0.5)
    raise AssertionError(f"worker processed {seen} of {count} events in {timeout}s")


def events_waiting(settings: Settings) -> float:
    """The events the worker holds in its reorder buffer (its gauge)."""
    try:
        return sum(v for _, v in samples(settings.worker.metrics_port, "churnwatch_events_waiting"))
    except OSError:
        return 1.0  # not answering: not known to be done


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = 30, log: Path | None = None
) -> None:
    """Until ``condition()`` is true (a server not answering yet counts as not yet);
    on a timeout the end of ``log`` (a child's) is in the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(
        f"timed out waiting for {what}" + (f"; its log ends:\n{tail}" if tail else "")
    )


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples called ``name`` on the /metrics of the process on ``port``."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def assert_same_as_batch(settings: Settings, events: list[SimEvent]) -> None:
    """The warnings on the topic and the states in the table are the batch run's."""
    decoded = [decode_event(e.payload) for e in events]
    states, batch = run_history(decoded, settings.warnings, 86_400)
    streamed = {}
    for value in read_topic(settings, Topic.WARNINGS):
        record = WarningRecord.model_validate_json(value)
        key = (record.warning_id, record.status, record.at)
        assert streamed.setdefault(key, record) == record, "a record sent again must be the same"
    expected = {(w.warning_id, w.status, w.at): w for w in batch}
    lost = [describe(expected[key]) for key in sorted(set(expected) - set(streamed))]
    extra = [describe(streamed[key]) for key in sorted(set(streamed) - set(expected))]
    assert not lost and not extra, f"lost {lost[:5]} and extra {extra[:5]}"

    assert_same_states(live_states(settings), states)


def describe(record: WarningRecord) -> str:
    return f"{record.customer_id} {record.warning_type} {record.status} at {record.at:%Y-%m-%d}"
