"""docker-compose.yml and the Dockerfile agree with the code (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from churnwatch.settings import PROJECT_ROOT, load_settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_kafka_with_a_healthcheck_and_the_worker_waits_for_topics():
    services = compose()["services"]
    assert services["kafka"]["healthcheck"]["test"]
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["topics"]["condition"] == "service_completed_successfully"
    assert "container_name" not in services["worker"], "workers must be scalable"


def test_every_churnwatch_variable_in_compose_is_a_real_setting(monkeypatch):
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("CHURNWATCH_"):
                monkeypatch.setenv(key, str(value))
    settings = load_settings()  # extra="forbid": a misspelt variable would fail here
    assert settings.kafka.bootstrap_servers == "kafka:9092"


def test_every_command_in_compose_is_a_churnwatch_command():
    from click.testing import CliRunner

    from churnwatch.cli import cli

    for name, service in compose()["services"].items():
        command = service.get("command")
        if command and command[0] == "churnwatch":
            result = CliRunner().invoke(cli, [*command[1:], "--help"])
            assert result.exit_code == 0, (name, result.output)


def test_dockerfile_copies_every_package_and_runs_as_non_root():
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    for package in ("churnwatch", "pipeline", "producers", "consumers", "models", "configs"):
        assert f"COPY {package} ./{package}" in text
    assert "\nUSER " in text
    assert Path(PROJECT_ROOT / "configs" / "default.yaml").exists()
