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
