"""Shared fixtures: settings for a test, and an event factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from churnwatch.settings import Settings, load_settings
from tests.factories import make_event


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def event_factory() -> Callable[..., Any]:
    return make_event
