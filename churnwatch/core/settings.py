"""The one settings object of churnwatch.

Loaded from a YAML file (``configs/default.yaml``, shipped inside the package,
unless ``--config`` or ``CHURNWATCH_CONFIG`` names another) with ``CHURNWATCH_``
environment overrides, ``__`` for nesting: ``CHURNWATCH_KAFKA__PARTITIONS=8``.
Unknown keys are errors, so a typo never silently falls back to a default.
Runtime data (worker stores, archive, ledger, model registry) goes under
``.churnwatch/`` in the working directory unless the settings say otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from churnwatch.core.thresholds import Section as _Section
from churnwatch.core.thresholds import WarningThresholds, deep_merge

#: The settings shipped with churnwatch (package data: ``configs/`` of the checkout).
CONFIGS = Path(str(resources.files("churnwatch") / "configs"))
DEFAULT_CONFIG = CONFIGS / "default.yaml"
#: Keys holding a file path that a settings file may give relative to itself.
_RELATIVE_TO_FILE = (("alerts", "routing"),)
#: A warning's severities, lowest first (``pipeline.events.Severity``).
SEVERITIES = ("low", "medium", "high", "critical")
#: Environment variables that override settings: ``CHURNWATCH_SECTION__KEY``.
ENV_PREFIX = "CHURNWATCH_"


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    topic_prefix: str = Field("churn", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _sasl_needs_a_sasl_protocol(self) -> KafkaSettings:
        # Credentials must never go out over a protocol that does not use them.
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL settings are given, but security_protocol is {self.security_protocol}: "
                "use SASL_SSL (or SASL_PLAINTEXT on a trusted network), or remove them"
            )
        return self


class BrokerSettings(_Section):
    """The embedded Tansu broker used by the demo and the tests."""

    host: str = "127.0.0.1"
    port: int = Field(19092, ge=1, le=65535)
    startup_timeout_seconds: float = Field(20.0, gt=0)


class WorkerSettings(_Section):
    app_id: str = "churnwatch"
    store: str = "rocksdb://"
    store_buffer_mb: int = Field(4, ge=1, le=1024)
    data_dir: str = ".churnwatch/worker"
    broker_session_timeout: float = Field(6.0, gt=0)
    broker_rebalance_timeout: float = Field(60.0, gt=0)
    broker_heartbeat_interval: float = Field(1.0, gt=0)
    standby_replicas: int = Field(0, ge=0)
    batch_size: int = Field(8000, ge=1, le=100_000)
    max_waiting_events: int = Field(4000, ge=100)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    # uvloop runs Faust's per-message machinery about a third faster; asyncio
    # is the standard library's loop (and the fallback where uvloop is missing).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # at_least_once: a crash may send the last checkpoint's warnings and states
    # again (same ids: the dispatcher and the states absorb them). exactly_once:
    # each partition's checkpoint is one Kafka transaction (warnings, states,
    # progress and input offsets together); needs a broker with transactions
    # (Apache Kafka), not the embedded Tansu broker (docs/production.md).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"


class ClockSettings(_Section):
    """Which clock drives sweeps over silent customers.

    ``event``: the event-time watermark of each partition (replay, simulation);
    ``wall``: the real clock (live).
    """

    mode: Literal["event", "wall"] = "event"
    sweep_every_hours: float = Field(24.0, gt=0)
    allowed_lateness_hours: float = Field(0.0, ge=0)
    idle_topic_wait_seconds: float = Field(0.0, ge=0)
    wall_tick_seconds: float = Field(60.0, gt=0)


class ArchiveSettings(_Section):
    """``churnwatch archive``: every event to Parquet, for the batch jobs."""

    path: str = ".churnwatch/archive"
    group_id: str = "churnwatch-archiver"
    flush_events: int = Field(5000, ge=1)
    flush_seconds: float = Field(10.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535)  # 0: no /metrics


class ModelSettings(_Section):
    """The churn model: where the registry is, how it is trained and served."""

    registry: str = ".churnwatch/registry"
    horizon_days: float = Field(90.0, ge=7)
    cutoff_every_days: int = Field(14, ge=1)
    reload_seconds: float = Field(10.0, gt=0)
    batch_size: int = Field(512, ge=1)
    top_reasons: int = Field(3, ge=1, le=10)
    #: The weight of a churn-risk warning the team marked a false alarm, as a
    #: "not churning" training row at the cutoff before it opened (0: not used;
    #: docs/model.md, "What the team judged").
    false_alarm_weight: float = Field(0.0, ge=0, le=100)
    #: The backtest's alert budget: how many customers a rep can act on a week, and
    #: how many customers make a rep's book where the data names no owner
    #: (docs/model.md, "At an alert budget").
    calls_per_rep_week: int = Field(5, ge=1, le=500)
    customers_per_rep: int = Field(250, ge=1)


class SmtpSettings(_Section):
    """The mail server email channels send through; the password only from the environment."""

    host: str = "127.0.0.1"
    port: int = Field(1025, ge=1, le=65535)
    user: str = ""
    password: SecretStr = SecretStr("")
    sender: str = "churnwatch@localhost"
    security: Literal["insecure", "starttls", "ssl"] = "insecure"


class AlertSettings(_Section):
    """``churnwatch alerts``: routing, channels, noise control, ledger."""

    routing: str = str(CONFIGS / "routing.yaml")
    ledger_url: str = "sqlite:///.churnwatch/alerts.db"
    group_id: str = "churnwatch-alerts"
    smtp: SmtpSettings = SmtpSettings()
    #: Hours before an open episode is notified again, by warning type ("*": the rest).
    cooldown_hours: dict[str, float] = {"*": 72.0}
    daily_cap: int = Field(20, ge=1)
    digest_hour: int = Field(17, ge=0, le=23)
    retry_first_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535)  # 0: no /metrics
    #: Days from a warning's opening or escalation to its task's due time, by severity.
    task_due_days: dict[str, float] = {"critical": 1.0, "high": 3.0, "medium": 7.0, "low": 14.0}
    #: Days from the owner's reminder of an overdue task to its manager being told.
    task_escalate_days: float = Field(2.0, gt=0)

    @field_validator("task_due_days")
    @classmethod
    def _every_severity(cls, value: dict[str, float]) -> dict[str, float]:
        missing = [s for s in SEVERITIES if s not in value]
        unknown = [s for s in value if s not in SEVERITIES]
        if missing or unknown:
            raise ValueError(
                f"needs days for each of {', '.join(SEVERITIES)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        if any(days <= 0 for days in value.values()):
            raise ValueError("days must be above 0")
        return value


class SimulatorSettings(_Section):
    customers: int = Field(300, ge=1)
    seed: int = 7
    start: str = "2024-10-07"
    days: int = Field(540, ge=60)
    owners: int = Field(6, ge=1)
    malformed: int = Field(5, ge=0)
    ground_truth_path: str = ".churnwatch/ground_truth.csv"


class WebSettings(_Section):
    """``churnwatch web``: the sales team's inbox."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: The address people open (links in notifications point here); "" = no links.
    base_url: str = Field("", pattern=r"^(https?://[^\s]+)?$")
    #: Signs the session cookies; set it (from the environment) so sessions survive a
    #: restart and several web processes agree. Empty: a random one per process.
    session_secret: SecretStr = SecretStr("")
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    #: Cookies only over HTTPS (set behind a TLS-terminating proxy).
    secure_cookies: bool = False
    #: Single sign-on: trust this header's user name, only from ``trusted_proxies``.
    user_header: str = ""
    trusted_proxies: list[str] = []
    #: Signs the one-click action links in notifications (docs/web.md); the
    #: dispatcher and the web process must share it. Empty: no links.
    link_secret: SecretStr = SecretStr("")
    #: How long a one-click link works.
    link_days: float = Field(7.0, gt=0, le=90)
    #: Rows per inbox page.
    page_size: int = Field(100, ge=10, le=1000)
    #: A `churnwatch backtest --out` folder's summary.json: the team view shows each
    #: type's backtest precision next to the team's own ("" = none).
    backtest_summary: str = ""


class Settings(BaseSettings):
    """Everything a churnwatch process needs; frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
    worker: WorkerSettings = WorkerSettings()
    clock: ClockSettings = ClockSettings()
    warnings: WarningThresholds = WarningThresholds()
    archive: ArchiveSettings = ArchiveSettings()
    model: ModelSettings = ModelSettings()
    alerts: AlertSettings = AlertSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    web: WebSettings = WebSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    def topic(self, name: str) -> str:
        """Full, versioned topic name, e.g. ``churn.orders.v1``."""
        return f"{self.kafka.topic_prefix}.{name}"

    def kafka_group_options(self) -> dict[str, Any]:
        """Group timing for the kafka-python consumer groups (archiver, dispatcher): the
        worker's session and heartbeat, so a member killed without leaving is noticed
        as soon as the worker's would be, not after kafka-python's defaults."""
        w = self.worker
        return {
            "session_timeout_ms": int(w.broker_session_timeout * 1000),
            "heartbeat_interval_ms": int(w.broker_heartbeat_interval * 1000),
            # a change of the subscribed topics' partitions noticed within 30 s, not 5 min
            "metadata_max_age_ms": 30_000,
        }

    def kafka_consumer_options(self) -> dict[str, Any]:
        """Connection options for kafka-python consumers: reading committed records
        only (a worker in exactly-once mode writes in transactions; records of one
        it did not commit are never seen; without transactions nothing differs)."""
        return {**self.kafka_client_options(), "isolation_level": "read_committed"}

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options for kafka-python clients (never logged: holds the password)."""
        k = self.kafka
        options: dict[str, Any] = {
            "bootstrap_servers": k.bootstrap_servers.split(","),
            "security_protocol": k.security_protocol,
        }
        if k.sasl_mechanism:
            options["sasl_mechanism"] = k.sasl_mechanism
            options["sasl_plain_username"] = k.sasl_username
            options["sasl_plain_password"] = (
                k.sasl_password.get_secret_value() if k.sasl_password else None
            )
        if k.ssl_cafile:
            options["ssl_cafile"] = k.ssl_cafile
        return options


class ConfigError(Exception):
    """A settings file or override is wrong; the message names the key."""


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid settings in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file, apply ``CHURNWATCH_`` environment overrides and validate.

    ``overrides`` (nested dicts) are merged over the file, below the environment;
    tests use them to pick a port or a topic prefix.
    """
    config_path = Path(path or os.environ.get("CHURNWATCH_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"settings file not found: {config_path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {config_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"settings file {config_path} must hold a mapping at the top level")
    _check_environment(os.environ)
    merged = deep_merge(_relative_to(config_path.parent, raw), overrides)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(config_path), exc)) from exc


def _relative_to(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A relative path in a settings file means beside that file (as Prometheus reads
    its rule files), so the shipped ``routing: routing.yaml`` works wherever
    churnwatch is installed; paths from the environment stay relative to the
    working directory."""
    for section, key in _RELATIVE_TO_FILE:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            raw = deep_merge(raw, {section: {key: str(folder / value)}})
    return raw


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``CHURNWATCH_*`` variables that set nothing (a typo would otherwise be
    silently ignored, and the default used)."""
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == "CHURNWATCH_CONFIG":
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] = Settings
        for depth, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                raise ConfigError(
                    f"unknown setting in the environment: {name}{_hint(model, parts, depth)}"
                )
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                if depth + 1 < len(parts) and not _is_mapping(nested):
                    raise ConfigError(
                        f"unknown setting in the environment: {name} "
                        f"({'.'.join(parts[: depth + 1])} has no parts)"
                    )
                break
            model = nested


def _hint(model: type[BaseModel], parts: list[str], depth: int) -> str:
    """Did a single underscore stand for the ``__`` between a section and its key?"""
    flat = "_".join(parts[depth:])
    for field in model.model_fields:
        if flat.startswith(f"{field}_"):
            fixed = "__".join([*parts[:depth], field, flat[len(field) + 1 :]])
            return f" (did you mean {ENV_PREFIX}{fixed.upper()}?)"
    return f" (known here: {', '.join(model.model_fields)})"


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) in (dict, Mapping) or annotation is dict
