"""`churnwatch demo` as a user runs it: a summary at the end, nothing left behind on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churnwatch.core.apache_kafka import ApacheKafkaUnavailable, fetch_jars
from churnwatch.core.broker import free_port
from tests.conftest import APACHE_KAFKA, BROKERS

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def batch_summary(customers: int, days_per_second: float, tmp_path) -> dict:
    from churnwatch.core.settings import load_settings
    from churnwatch.demo.setup import lateness_hours, train_demo_model
    from churnwatch.demo.tally import Tally, health_summary, summarise
    from churnwatch.pipeline.events import decode_event
    from churnwatch.pipeline.processing import run_history
    from churnwatch.pipeline.scoring import load_model
    from churnwatch.producers.produce import ProduceStats
    from churnwatch.producers.simulator import parse_start, simulate

    s = load_settings()
    sim = s.simulator
    events, truth = simulate(
        customers, sim.seed, parse_start(sim.start), sim.days, sim.owners, sim.malformed
    )
    good = [decode_event(e.payload) for e in events if not e.malformed]
    # the same model the demo trains (deterministic), served the same way
    trained = train_demo_model(s, customers, tmp_path / "registry")
    model = load_model(trained.folder)
    states, records = run_history(
        good,
        s.warnings,
        s.clock.sweep_every_hours * 3600,
        lateness_hours(s, days_per_second) * 3600,
        model_at=lambda _boundary: model,
    )
    tally = Tally()
    for record in records:
        tally.add(record)
    return {**summarise(truth, tally, ProduceStats(), 0, 0), **health_summary(truth, states)}


def _as_in_a_terminal() -> None:
    # Ctrl-C reaches a foreground program with SIGINT's default action; a test
    # run started in the background (`make test &`) inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_demo(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, CHURNWATCH_BROKER__PORT=str(free_port()))
    return subprocess.Popen(
        [sys.executable, "-m", "churnwatch.cli", "demo", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_as_in_a_terminal,  # noqa: PLW1509 - no threads to race in the child yet
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_small_demo_writes_a_summary_that_matches_the_simulation(tmp_path, broker):
    """On the embedded broker (`make demo`) and on Apache Kafka (``--broker
    apache-kafka``): the same summary."""
    if broker == APACHE_KAFKA:
        try:
            fetch_jars()
        except ApacheKafkaUnavailable as exc:
            pytest.skip(f"Apache Kafka cannot run here: {exc}")
    summary = tmp_path / "s.json"
    demo = start_demo(
        "--broker",
        broker,
        "--customers",
        "60",
        "--days-per-second",
        "60",
        "--duration",
        "240",
        "--summary",
        str(summary),
    )
    out, _ = demo.communicate(timeout=300)
    assert demo.returncode == 0, out
    result = json.loads(summary.read_text())
    assert result["events_processed"] == result["events_produced"] > 5000
    assert result["dead_letters"] == result["events_malformed_sent"] == 5
    assert result["churners_total"] + result["steady_total"] == 60
    assert result["churners_warned"] / result["churners_total"] >= 0.8
    # exactly what the same logic finds in batch over the same simulation
    expected = batch_summary(60, 60, tmp_path)
    assert result["churners_warned"] == expected["churners_warned"]
    assert result["steady_warned"] == expected["steady_warned"]
    assert result["warnings"] == expected["warnings"]
    # the health score the worker keeps tells the churners from the steady ones
    health = result["health_score"]
    assert health["customers_scored"] == 60
    assert health["steady"] > health["churners"] + 20
    assert health == expected["health_score"]  # (the same code in stream and batch)
    assert set(result["warnings"]) <= {
        "sales_drop",
        "overdue_debt",
        "cooling_engagement",
        "complaint_trouble",
        "churn_risk",
    }
    # the demo trained and served a model, and it raised churn-risk warnings
    assert result["model_version"].startswith("v")
    assert result["warnings"].get("churn_risk", 0) > 0
    # the owners were mailed, once per notification
    assert result["notifications_sent"] >= 10
    assert result["duplicate_notifications"] == 0
    assert result["notified_owners"] >= 3
    assert result["notifications_by_status"]["sent"] == result["notifications_sent"]
    # each warning gave its owner a task: open while it is, done once it resolved
    assert result["tasks_open"] > 0 and result["tasks_done"] > 0
    assert result["tasks_open"] + result["tasks_done"] == sum(result["warnings"].values())


def test_ctrl_c_stops_the_demo_and_leaves_no_process_behind():
    demo = start_demo("--customers", "400")  # still running when interrupted
    pids: dict[str, int] = {}
    deadline = time.monotonic() + 120
    assert demo.stdout is not None
    while time.monotonic() < deadline and len(pids) < 3:
        line = demo.stdout.readline()
        if not line:
            break
        if m := re.search(r"broker ready on \S+ \(pid (\d+)\)", line):
            pids["broker"] = int(m.group(1))
        if m := re.search(r"worker started \(pid (\d+)", line):
            pids["worker"] = int(m.group(1))
        if m := re.search(r"alert dispatcher started \(pid (\d+)", line):
            pids["dispatcher"] = int(m.group(1))
    assert set(pids) == {"broker", "worker", "dispatcher"}
    time.sleep(3)  # let it get going
    assert all(alive(pid) for pid in pids.values())
    demo.send_signal(signal.SIGINT)
    out, _ = demo.communicate(timeout=90)
    assert demo.returncode == 130, out
    time.sleep(0.5)
    assert not [name for name, pid in pids.items() if alive(pid)]
