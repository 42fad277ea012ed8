"""The Prometheus config and alerting rules, checked and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.paths import REPO

PROMETHEUS = REPO / "configs" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool missing: install Debian's prometheus package (`make test` does, as root)",
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_config_and_rules_are_valid():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "6 rules found" in promtool("check", "rules", "rules/churnwatch.yml")


@needs_promtool
def test_every_alert_rule_fires_when_it_should_and_not_before():
    out = promtool("test", "rules", "tests/churnwatch_test.yml")
    assert "SUCCESS" in out
    tested = (PROMETHEUS / "tests" / "churnwatch_test.yml").read_text()
    rules = (PROMETHEUS / "rules" / "churnwatch.yml").read_text()
    for line in rules.splitlines():
        if line.strip().startswith("- alert:"):
            name = line.split(":", 1)[1].strip()
            assert f"alertname: {name}" in tested, f"{name} has no promtool test"
