"""docker-compose.yml and the Dockerfile agree with the code (no Docker engine here)."""

from __future__ import annotations

import yaml

from churnwatch.core.settings import load_settings
from tests.paths import REPO

COMPOSE = REPO / "docker-compose.yml"


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


def substitute(value: str) -> str:
    """Compose's ${VAR:-default} interpolation, with .env's values."""
    import re

    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return re.sub(
        r"\$\{([A-Z_]+)(?::-([^}]*))?[^}]*\}",
        lambda m: env.get(m.group(1)) or (m.group(2) or ""),
        value,
    )


def test_every_churnwatch_variable_in_compose_is_a_real_setting(monkeypatch):
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("CHURNWATCH_"):
                monkeypatch.setenv(key, substitute(str(value)))
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


def test_dockerfile_installs_the_wheel_alone_and_runs_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    image = text.split("\nFROM ")[-1]  # the final stage: what ships
    assert "pip wheel" in text and "/wheels/*.whl" in image
    for package in ("churnwatch", "pipeline", "producers", "consumers", "models", "configs"):
        assert f"COPY {package}" not in image  # the code comes in the wheel only
    assert "\nUSER " in image


def test_compose_file_validates_against_the_compose_specification():
    import json
    import re

    import jsonschema

    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    # Compose substitutes ${VAR} before validating; .env gives the values
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    text = COMPOSE.read_text()
    for name in re.findall(r"\$\{([A-Z_]+)(?::?[-?])?[^}]*\}", text):
        assert name in env or re.search(rf"\$\{{{name}:-", text), f"${{{name}}} has no value"
    jsonschema.validate(compose(), schema)  # raises with the path of the first problem
    broken = compose()
    broken["services"]["worker"]["restart"] = ["always"]
    with __import__("pytest").raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_runs_the_whole_stack_and_pins_its_images():
    services = compose()["services"]
    assert {"kafka", "topics", "worker", "alerts", "archiver", "prometheus", "grafana"} <= set(
        services
    )
    assert services["simulator"]["profiles"] == ["demo"] == services["mailpit"]["profiles"]
    env = (REPO / ".env").read_text()
    for service in services.values():
        image = service.get("image")
        if image:
            variable = image.split("${")[1].split(":")[0].split("}")[0]
            assert f"{variable}=" in env, f"{image}: tag not pinned in .env"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source
    # every scrape target is a service of the stack, on the port it serves /metrics on
    prometheus = yaml.safe_load((REPO / "configs/prometheus/prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for target in [t for c in job.get("static_configs", []) for t in c["targets"]] + [
            f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]
        ]:
            host, port = target.split(":")
            assert host in services and port in [str(p) for p in services[host]["expose"]]


def test_dockerfile_pins_every_dependency():
    import tomllib

    lock = (REPO / "requirements.lock").read_text().lower()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        assert f"\n{name}==" in "\n" + lock.replace("_", "-"), f"{name} not in requirements.lock"
    assert "-c /tmp/requirements.lock" in (REPO / "Dockerfile").read_text()


def test_only_services_with_a_login_publish_on_every_interface():
    """Prometheus and the demo's Mailpit have no login: this machine only."""
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "grafana":  # admin password required, no anonymous access
                continue
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to everyone"
