"""Events in through a real broker, warnings out of a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from churnwatch.core.apache_kafka import ApacheKafkaCluster
from churnwatch.core.topics import Topic, require_transactions
from churnwatch.pipeline.events import (
    AccountChange,
    DeadLetter,
    WarningRecord,
    decode_event,
    encode_event,
)
from churnwatch.pipeline.health import band_of
from churnwatch.pipeline.processing import run_history
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.factories import T0, make_event
from tests.integration.conftest import (
    isolated_settings,
    produce_raw,
    read_topic,
    samples,
    settings_env,
    wait_processed,
)


def metric(settings, name: str) -> float:
    """One sample of the worker's /metrics, summed over its labels."""
    return sum(value for _, value in samples(settings.worker.metrics_port, name))


def test_simulated_customers_in_warnings_out(stream_settings, worker):
    events, truth = simulate(40, 5, parse_start("2024-10-07"), 540, 3, 0)
    proc = worker()
    stats = produce(stream_settings, iter_paced(events, 0))
    assert stats.failed == 0
    wait_processed(stream_settings, len(events), proc)
    assert metric(stream_settings, "churnwatch_customers_tracked") == len(truth)
    assert metric(stream_settings, "churnwatch_dead_letters_total") == 0

    warnings = [
        WarningRecord.model_validate_json(v) for v in read_topic(stream_settings, Topic.WARNINGS)
    ]
    opened = {w.customer_id for w in warnings if w.status == "opened"}
    churners = [t for t in truth if t.churned]
    steady = [t for t in truth if not t.churned]
    assert churners and steady
    assert sum(t.customer_id in opened for t in churners) / len(churners) >= 0.8
    assert sum(t.customer_id in opened for t in steady) / len(steady) <= 0.2
    for w in warnings:
        assert w.owner.startswith("rep") and w.customer_name, "master data joined in"

    # The stream gives the same episodes as the same logic run in batch.
    states, batch = run_history(
        [decode_event(e.payload) for e in events], stream_settings.warnings, 86_400
    )
    assert sorted((w.warning_id, w.status) for w in warnings) == sorted(
        (w.warning_id, w.status) for w in batch
    )
    # The account feed: each customer's health band as it changed; the last one is
    # the band the batch run ends with, and churners end worse off than the steady.
    changes = [
        AccountChange.model_validate_json(v) for v in read_topic(stream_settings, Topic.HEALTH)
    ]
    assert changes and {c.change for c in changes} == {"band_changed"}
    last = {c.customer_id: c for c in changes}
    for customer_id, change in last.items():
        assert change.band == band_of(
            int(states[customer_id].block.col["health_score"][states[customer_id].row])
        )
    firsts = [c for c in changes if c.previous_band is None]
    assert len({c.customer_id for c in firsts}) == len(firsts)  # a first band once each
    bad = {"watch", "at_risk"}
    assert sum(last[t.customer_id].band in bad for t in churners if t.customer_id in last) > (
        sum(last[t.customer_id].band in bad for t in steady if t.customer_id in last)
        * len(churners)
        / len(steady)
    )


def test_malformed_event_goes_to_dead_letters_and_processing_continues(stream_settings, worker):
    proc = worker()
    bad = b'{"type": "order_placed", "customer_id": "C9", "amount": 12'
    invoice = make_event("invoice", customer_id="C9", invoice_id="INV-1", amount=800.0)
    later = [
        make_event("contact", customer_id="C9", at=T0 + timedelta(days=d)) for d in range(1, 70, 7)
    ]
    messages = [(Topic.ORDERS, "C9", bad), (Topic.PAYMENTS, "C9", encode_event(invoice))]
    messages += [(Topic.ENGAGEMENT, "C9", encode_event(e)) for e in later]
    produce_raw(stream_settings, messages)
    wait_processed(stream_settings, len(messages), proc)

    (letter,) = [
        DeadLetter.model_validate_json(v) for v in read_topic(stream_settings, Topic.DEAD_LETTERS)
    ]
    assert letter.topic == stream_settings.topic(Topic.ORDERS)
    assert letter.payload == bad.decode()
    assert "JSON" in letter.error
    assert letter.key == "C9"

    warnings = [json.loads(v) for v in read_topic(stream_settings, Topic.WARNINGS)]
    assert [(w["warning_type"], w["status"]) for w in warnings] == [("overdue_debt", "opened")]
    assert proc.poll() is None, "a bad message must not stop the worker"


def first_warnings(settings, within: float) -> list[WarningRecord]:
    """The warnings topic once it holds any (polled each second), or [] after ``within`` s."""
    deadline = time.monotonic() + within
    warnings: list[WarningRecord] = []
    while not warnings and time.monotonic() < deadline:
        time.sleep(1)
        warnings = [
            WarningRecord.model_validate_json(v) for v in read_topic(settings, Topic.WARNINGS)
        ]
    return warnings


def test_wall_clock_sweeps_find_silent_debt_without_new_events(broker, worker, tmp_path):
    """Live mode: nothing arrives after the invoice, yet the wall-clock sweep warns."""
    settings = isolated_settings(
        broker, tmp_path / "wall", clock={"mode": "wall", "wall_tick_seconds": 1}
    )
    now = datetime.now(UTC)
    invoice = make_event(
        "invoice",
        customer_id="C77",
        at=now - timedelta(days=100),
        amount=500.0,
        due_date=now - timedelta(days=70),
    )
    worker(settings)
    produce_raw(settings, [(Topic.PAYMENTS, "C77", encode_event(invoice))])
    warnings = first_warnings(settings, within=90)
    (warning,) = warnings
    assert warning.warning_type == "overdue_debt" and warning.status == "opened"
    assert abs((warning.opened_at - now).days) <= 1  # swept on the real clock
    assert warning.evidence["max_days_past_due"] >= 69


def test_a_restarted_wall_clock_worker_sweeps_customers_no_message_reaches(
    broker, worker, tmp_path
):
    """Live mode, and no event at all after a restart: the worker's own timer still
    sweeps the partitions it owns (from their stored states), so a debt that falls
    due while nothing arrives is warned about."""
    import signal

    settings = isolated_settings(
        broker,
        tmp_path / "wall",
        store="rocksdb://",
        clock={"mode": "wall", "wall_tick_seconds": 0.5, "sweep_every_hours": 1 / 3600},
    )
    first = worker(settings)
    now = datetime.now(UTC)
    threshold = timedelta(days=settings.warnings.overdue_debt.enter_days_past_due)
    invoice = make_event(
        "invoice",
        customer_id="C78",
        at=now - timedelta(days=60),
        amount=500.0,
        due_date=now - threshold + timedelta(seconds=45),  # past due long enough in 45 s
    )
    produce_raw(settings, [(Topic.PAYMENTS, "C78", encode_event(invoice))])
    wait_processed(settings, 1, first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert read_topic(settings, Topic.WARNINGS) == []  # not yet due when it stopped
    worker(settings)  # nothing more is produced
    warnings = first_warnings(settings, within=90)
    assert [(w.customer_id, w.warning_type, w.status) for w in warnings] == [
        ("C78", "overdue_debt", "opened")
    ]


def test_exactly_once_needs_a_broker_with_transactions_and_says_so(broker, tmp_path):
    """``churnwatch worker`` in exactly-once mode probes the broker first: on the
    embedded Tansu broker (no transactions) it exits at once with an error that
    names the setting and what to do; on Apache Kafka the probe passes."""
    settings = isolated_settings(
        broker, tmp_path / "worker", worker={"processing_guarantee": "exactly_once"}
    )
    env = {**os.environ, **settings_env(settings), "CHURNWATCH_WORKER__METRICS_PORT": "0"}
    if isinstance(broker, ApacheKafkaCluster):
        require_transactions(settings)  # raises if it cannot
        return
    done = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "worker.processing_guarantee is exactly_once" in done.stderr
    assert "runs no Kafka transactions" in done.stderr
    assert "Traceback" not in done.stderr
