"""The fast tier (`pytest -m "not integration"`) holds no test that needs the broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collected(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_not_integration_runs_no_broker_test_and_integration_runs_them_all():
    fast = collected("-m", "not integration", "tests")
    slow = collected("-m", "integration", "tests")
    assert fast and slow
    assert not [t for t in fast if t.startswith("tests/integration/")]
    assert all(t.startswith("tests/integration/") for t in slow)
    everything = collected("tests/integration")
    assert sorted(slow) == sorted(everything)


def test_apache_kafka_selects_every_run_on_apache_kafka_and_nothing_else():
    """`pytest tests/integration -m apache_kafka`: the broker tests' second run, the
    three-node failure tests, the demo on Apache Kafka; no Tansu run."""
    chosen = collected("-m", "apache_kafka", "tests/integration")
    assert chosen and all("[tansu" not in t for t in chosen)
    on_both = [t for t in collected("tests/integration") if "[tansu" in t]
    assert on_both
    for test in on_both:  # each broker test runs on both
        assert test.replace("[tansu", "[apache-kafka") in chosen, test
    assert any("test_broker_failures.py" in t for t in chosen)
