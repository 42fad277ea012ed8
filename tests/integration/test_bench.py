"""`churnwatch bench` as a user runs it: its own broker, a drain, figures as a table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_measures_the_worker_against_the_bare_loop(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--customers", "150", "--days", "300", "--no-model", "--store", "memory://"]
    args += ["--live-days", "20", "--live-rate", "500", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bare loop" in done.stdout and "events/s" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["customers"] == 150 and figures["model"] == "none"
    assert figures["bare_loop_events_per_second"] > 0
    # Faust's own cost per message, measured on the same topics: between the two
    floor = figures["faust_floor_events_per_second"]
    assert 0 < floor < figures["bare_loop_events_per_second"]
    assert "do-nothing Faust agent" in done.stdout
    (run,) = figures["runs"]
    assert run["workers"] == 1 and run["events"] == figures["events"] > 1000
    assert run["events_per_second"] > 0
    assert run["ratio_to_bare_loop"] == pytest.approx(
        run["events_per_second"] / figures["bare_loop_events_per_second"], rel=0.01
    )
    assert run["ratio_to_faust_floor"] == pytest.approx(run["events_per_second"] / floor, abs=0.01)
    # every customer's state reached the changelog, in the compact format
    assert 0 < run["state_bytes_per_customer"] <= 2048
    assert run["warnings"] > 0 and run["live_events"] > 0
    # the worker and the broker were busy while it drained, on this machine's cores
    cores = os.cpu_count() or 1
    assert 0 < run["worker_cores"] <= cores + 0.2
    # (the broker's share of a small drain can round to 0.00: measured, not guessed)
    assert run["broker_cores"] is not None and 0 <= run["broker_cores"] <= cores + 0.2
    assert "cores w+b" in done.stdout
    # events wait for the watermark (the topics are read at different speeds)
    assert run["waiting_max"] > 0
