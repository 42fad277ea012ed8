"""Shared fixtures: settings for a test, and an event factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from churnwatch.core.settings import Settings, load_settings
from tests.factories import make_event

INTEGRATION = Path(__file__).parent / "integration"
TANSU, APACHE_KAFKA = "tansu", "apache-kafka"
BROKERS = [TANSU, APACHE_KAFKA]


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


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def event_factory() -> Callable[..., Any]:
    return make_event
