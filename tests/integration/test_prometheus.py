"""A real Prometheus scrapes a running pipeline; every dashboard query returns data.

Needs Debian's ``prometheus`` binary (``make test`` installs it as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from churnwatch.core.broker import free_port, start_child, stop_child
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.registry import promote
from churnwatch.core.topics import Topic
from churnwatch.models.train import train
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.integration.conftest import (
    isolated_settings,
    read_topic,
    samples,
    settings_env,
    wait_for,
    wait_processed,
)
from tests.paths import REPO
from tests.unit.test_grafana import dashboard

PROMETHEUS = shutil.which("prometheus")
RULES = REPO / "configs" / "prometheus" / "rules"


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


NOTIFICATION_SECONDS = 120  # a busy CI machine: the whole path, worker to inbox


def why_no_notification(settings, dispatcher, alerts_port: int, alerts_log) -> str:
    """What each part of the path from the worker to the inbox did (a failure's message)."""

    def figures(port: int, name: str) -> object:
        try:
            return {tuple(sorted(labels.items())): value for labels, value in samples(port, name)}
        except OSError as exc:
            return f"no answer ({exc})"

    emitted = figures(settings.worker.metrics_port, "churnwatch_warnings_total")
    if isinstance(emitted, dict):
        emitted = sum(emitted.values())
    return "\n".join(
        [
            f"no notification reached the inbox within {NOTIFICATION_SECONDS} s",
            f"dispatcher exit code: {dispatcher.poll()}",
            f"warnings on the topic: {len(read_topic(settings, Topic.WARNINGS))}",
            f"worker warnings_total: {emitted}",
            "dispatcher notifications_total: "
            f"{figures(alerts_port, 'churnwatch_notifications_total')}",
            "dispatcher notifications_failed_total: "
            f"{figures(alerts_port, 'churnwatch_notifications_failed_total')}",
            f"dispatcher outbox_depth: {figures(alerts_port, 'churnwatch_outbox_depth')}",
            "dispatcher log (tail):",
            alerts_log.read_text(errors="replace")[-3000:],
        ]
    )


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing (`make test` installs it)")
def test_every_dashboard_query_returns_data_from_a_running_pipeline(broker, worker, tmp_path):
    registry = tmp_path / "registry"
    settings = isolated_settings(
        broker, tmp_path / "worker", model={"registry": str(registry), "reload_seconds": 0.5}
    )
    past, _ = simulate(120, 11, parse_start("2024-10-07"), 540, 3, 0)
    model = train([decode_event(e.payload) for e in past], settings, registry, "simulator")
    promote(registry, model.version)

    inbox = LocalInbox().start()
    alerts_port = free_port()
    alerts_env = dict(
        os.environ,
        **settings_env(settings),
        CHURNWATCH_ALERTS__LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        CHURNWATCH_ALERTS__SMTP__PORT=str(inbox.port),
        CHURNWATCH_ALERTS__GROUP_ID=f"alerts-{settings.kafka.topic_prefix}",
        CHURNWATCH_ALERTS__METRICS_PORT=str(alerts_port),
    )
    dispatcher = start_child(
        [sys.executable, "-m", "churnwatch.cli", "alerts", "run"],
        env=alerts_env,
        log=tmp_path / "alerts.log",
    )
    prometheus = None
    try:
        proc = worker(settings)
        events, _ = simulate(60, 5, parse_start("2024-10-07"), 540, 3, 2)
        produce(settings, iter_paced(events, 0))
        wait_processed(settings, len(events), proc)
        try:
            wait_for(
                lambda: len(inbox.received()) > 0, "a notification", timeout=NOTIFICATION_SECONDS
            )
        except AssertionError as exc:
            raise AssertionError(
                why_no_notification(settings, dispatcher, alerts_port, tmp_path / "alerts.log")
            ) from exc
        # Each process exports what it owns (and its process figures), nothing else.
        own = {
            settings.worker.metrics_port: "churnwatch_customers_tracked",
            alerts_port: "churnwatch_outbox_depth",
        }
        for port, name in own.items():
            assert samples(port, name) and samples(port, "process_resident_memory_bytes")
            for other in set(own.values()) - {name}:
                assert samples(port, other) == [], f"{other} exported on :{port}"

        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": "churnwatch",
                    "static_configs": [
                        {
                            "targets": [
                                f"127.0.0.1:{settings.worker.metrics_port}",
                                f"127.0.0.1:{alerts_port}",
                            ]
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
        prometheus = subprocess.Popen(  # noqa: S603
            [
                str(PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=prometheus_log,
        )

        def targets_up() -> int:
            result = api(port, "query", query="count(up == 1)")["data"]["result"]
            return int(result[0]["value"][1]) if result else 0

        wait_for(lambda: targets_up() == 2, "both targets up", timeout=60)
        time.sleep(4)  # a few scrapes, so that rate() has two samples

        groups = api(port, "rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == 6
        assert all(r["health"] == "ok" for g in groups for r in g["rules"])

        empty = []
        for panel in dashboard()["panels"]:
            for target in panel.get("targets", []):
                result = api(port, "query", query=target["expr"])
                assert result["status"] == "success", target["expr"]
                if not result["data"]["result"]:
                    empty.append(f"{panel['title']}: {target['expr']}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
            prometheus_log.close()
        stop_child(dispatcher)
        inbox.stop()
