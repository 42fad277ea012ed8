"""Shared fixtures: settings for a test, and an event factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from churnwatch.core.settings import Settings, load_settings
from tests.factories import make_event

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers by folder: everything under tests/integration/ needs the real broker, so
    ``pytest -m "not integration"`` runs no broker (a ``pytestmark`` in a conftest
    marks nothing)."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def event_factory() -> Callable[..., Any]:
    return make_event
