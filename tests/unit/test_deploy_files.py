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
        # a value from .env, a default, or required of the user with a message (:?)
        required = re.search(rf"\$\{{{name}:\?", text) and name not in env
        assert name in env or re.search(rf"\$\{{{name}:-", text) or required, name
        if required:
            assert name == "GRAFANA_ADMIN_PASSWORD", f"${{{name}}} must be set by the user"
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


def kafka_properties(environment: dict) -> dict[str, str]:
    """The apache/kafka image's KAFKA_FOO_BAR=... variables as foo.bar properties."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): str(value)
        for key, value in environment.items()
        if key.startswith("KAFKA_")
    }


def suite_properties(tmp_path, nodes: int) -> dict[str, str]:
    from churnwatch.core.apache_kafka import ApacheKafkaCluster

    cluster = ApacheKafkaCluster(tmp_path, nodes=nodes)
    text = cluster._properties(cluster.nodes[0])
    return dict(line.split("=", 1) for line in text.splitlines())


# the broker settings that make the suite's Apache Kafka behave as the deployed one
# (listeners, ports and folders differ by nature)
BEHAVIOUR = (
    "process.roles",
    "controller.listener.names",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "auto.create.topics.enable",
)


def test_the_suite_runs_the_compose_files_kafka_version_and_broker_settings(tmp_path):
    from churnwatch.core.apache_kafka import pinned_version

    kafka = compose()["services"]["kafka"]
    assert substitute(kafka["image"]) == f"apache/kafka:{pinned_version()}"
    assert (REPO / ".env").resolve() == (REPO / "configs" / "versions.env").resolve()
    deployed, suite = kafka_properties(kafka["environment"]), suite_properties(tmp_path, 1)
    for key in BEHAVIOUR:
        assert deployed[key] == suite[key], key


def test_the_three_broker_override_is_the_shape_the_failure_tests_run(tmp_path):
    import json

    import jsonschema

    override = yaml.safe_load((REPO / "docker-compose.kafka3.yml").read_text())
    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.validate(override, schema)
    base = compose()["services"]
    suite = suite_properties(tmp_path, 3)
    nodes = {n: s for n, s in override["services"].items() if n.startswith("kafka")}
    assert len(nodes) == 3
    for name, service in nodes.items():
        env = {**base.get(name, {}).get("environment", {}), **service["environment"]}
        deployed = kafka_properties(env)
        for key in (*BEHAVIOUR, "default.replication.factor", "min.insync.replicas"):
            assert deployed[key] == suite[key], (name, key)
        assert len(deployed["controller.quorum.voters"].split(",")) == 3
        if name != "kafka":
            assert substitute(service["image"]) == substitute(base["kafka"]["image"])
    # every churnwatch service reaches all three brokers and replicates its topics
    for name, service in base.items():
        if str(service.get("command", [""])[0]) == "churnwatch" or name == "simulator":
            env = override["services"][name]["environment"]
            assert env["CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS"].count(",") == 2, name
            assert env["CHURNWATCH_KAFKA__REPLICATION_FACTOR"] == "3", name
