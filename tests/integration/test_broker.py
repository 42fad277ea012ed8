"""The embedded broker's start-up errors say what is wrong and what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from churnwatch.core.broker import BrokerError, EmbeddedBroker, free_port
from churnwatch.core.topics import Topic

pytestmark = pytest.mark.integration


def test_port_taken_is_reported_with_the_fix():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(
            BrokerError, match=rf"port {port} .* already in use.*CHURNWATCH_BROKER__PORT"
        ):
            EmbeddedBroker("127.0.0.1", port).start()


def test_missing_binary_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerError, match="no Tansu broker binary found.*CALF_TANSU_BIN"):
        EmbeddedBroker("127.0.0.1", free_port()).start()


def test_broker_command_accepts_clients_and_stops_on_sigterm():
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "churnwatch.cli", "broker"],
        env=dict(os.environ, CHURNWATCH_BROKER__PORT=str(port)),
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert f"broker ready on 127.0.0.1:{port}" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_end_offsets_count_every_record_of_a_batch(broker, tmp_path):
    """The embedded broker answers ListOffsets with the last batch's base offset + 1;
    churnwatch's end_offsets checks the answer against a fetch."""
    from kafka import KafkaProducer, TopicPartition

    from churnwatch.core.topics import end_offsets
    from tests.integration.conftest import isolated_settings

    settings = isolated_settings(broker, tmp_path)
    topic = settings.topic(Topic.ORDERS)
    producer = KafkaProducer(linger_ms=100, **settings.kafka_client_options())
    for _ in range(25):  # one produce request: one record batch of 25
        producer.send(topic, key=b"C1", value=b"{}", partition=0)
    producer.flush()
    producer.close()
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    assert end_offsets(settings, tps) == {tps[0]: 25, tps[1]: 0}


def test_a_worker_whose_broker_lost_its_data_rebuilds_from_the_changelog(tmp_path):
    """The embedded broker keeps nothing across a restart: a worker that finds its
    changelog behind its local store says so, drops the local copy, rebuilds from
    the changelog (empty here) and goes on with what comes next, instead of
    refusing to start; with a broker of its own, so the session's broker stays up."""
    import time

    from churnwatch.core.broker import start_child, stop_child
    from churnwatch.core.topics import ensure_topics
    from churnwatch.producers.produce import produce
    from churnwatch.producers.simulator import iter_paced, parse_start, simulate
    from tests.integration.conftest import (
        isolated_settings,
        samples,
        settings_env,
        wait_processed,
    )

    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port, startup_timeout=30).start()
    proc = None
    try:
        settings = isolated_settings(broker, tmp_path / "worker", store="rocksdb://")
        events, _ = simulate(30, 5, parse_start("2024-10-07"), 120, 1, 0)
        assert produce(settings, iter_paced(events, 0)).failed == 0
        log = tmp_path / "worker.log"
        env = dict(os.environ, **settings_env(settings))
        proc = start_child([sys.executable, "-m", "churnwatch.cli", "worker"], env=env, log=log)
        wait_processed(settings, len(events), proc, timeout=120)
        broker.stop()
        broker = EmbeddedBroker("127.0.0.1", port, startup_timeout=30).start()  # empty
        deadline = time.monotonic() + 120
        while "rebuilding the partition from the changelog" not in log.read_text(errors="replace"):
            assert proc.poll() is None, (
                "the worker died: " + log.read_text(errors="replace")[-3000:]
            )
            assert time.monotonic() < deadline, (
                "no rebuild: " + log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.5)

        # It goes on: the same history sent again is applied to the rebuilt (empty) state.
        ensure_topics(settings)
        assert produce(settings, iter_paced(events, 0)).failed == 0
        wait_processed(settings, 2 * len(events), proc, timeout=120)
        tracked = sum(
            v for _, v in samples(settings.worker.metrics_port, "churnwatch_customers_tracked")
        )
        assert tracked == 30
    finally:
        if proc is not None:
            stop_child(proc)
        broker.stop()


@pytest.mark.apache_kafka
def test_apache_kafka_broker_command_keeps_its_topics_across_a_restart(tmp_path):
    """`churnwatch broker --apache-kafka`: ready on the configured port, stops on
    SIGTERM, and a second start on the same data folder still has the topic."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from churnwatch.core.apache_kafka import ApacheKafkaUnavailable, fetch_jars

    try:
        fetch_jars()
    except ApacheKafkaUnavailable as exc:
        pytest.skip(f"Apache Kafka cannot run here: {exc}")
    port = free_port()
    command = [sys.executable, "-m", "churnwatch.cli", "broker", "--apache-kafka"]
    command += ["--data-dir", str(tmp_path / "kafka")]
    env = dict(os.environ, CHURNWATCH_BROKER__PORT=str(port))
    for run in (1, 2):
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert f"broker ready on 127.0.0.1:{port} (Apache Kafka" in lines[1], lines
            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
            if run == 1:
                admin.create_topics([NewTopic("kept", 2, 1)])
            assert "kept" in admin.list_topics()
            admin.close()
            proc.terminate()
            assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
