"""Shared fixtures: settings for a test, an event factory, and the alert ledger on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from churnwatch.core.settings import Settings, load_settings
from tests.factories import make_event
from tests.postgres import PostgresCluster, PostgresUnavailable

INTEGRATION = Path(__file__).parent / "integration"
TANSU, APACHE_KAFKA = "tansu", "apache-kafka"
BROKERS = [TANSU, APACHE_KAFKA]
SQLITE, POSTGRESQL = "sqlite", "postgresql"
LEDGERS = [SQLITE, POSTGRESQL]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers by folder: everything under tests/integration/ needs the real broker, so
    ``pytest -m "not integration"`` runs no broker (a ``pytestmark`` in a conftest
    marks nothing). A test on Apache Kafka (the ``broker`` fixture's second
    parameter, or a cluster of its own) is marked ``apache_kafka``:
    ``pytest tests/integration -m apache_kafka`` runs those alone."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("broker") == APACHE_KAFKA:
            item.add_marker(pytest.mark.apache_kafka)
        if callspec is not None and callspec.params.get("ledger_url") == POSTGRESQL:
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def event_factory() -> Callable[..., Any]:
    return make_event


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL server for the session (skipped, with the reason,
    where PostgreSQL is not installed)."""
    try:
        cluster = PostgresCluster().start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture(params=LEDGERS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty alert ledger: a SQLite file, and a PostgreSQL database."""
    if request.param == SQLITE:
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)
