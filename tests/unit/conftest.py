"""Fixtures of the dispatcher tests (test_alerts, test_tasks): a real SMTP inbox, a
real webhook receiver, and a dispatcher on a test clock over the ledger."""

from __future__ import annotations

import pytest

from churnwatch.consumers.alerts.dispatcher import Dispatcher
from churnwatch.consumers.alerts.ledger import open_ledger
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.settings import AlertSettings, SmtpSettings
from tests.dispatching import Clock, Webhook, routing_for


@pytest.fixture
def inbox():
    box = LocalInbox().start()
    yield box
    box.stop()


@pytest.fixture
def webhook():
    hook = Webhook()
    hook.start()
    yield hook
    if hook.server is not None:
        try:
            hook.stop()
        except OSError:
            pass


@pytest.fixture
def make(ledger_url, inbox, webhook):
    clock = Clock()

    def build(routing: dict | None = None, publish=None, **settings) -> Dispatcher:
        alert_settings = AlertSettings(
            ledger_url=ledger_url,
            smtp=SmtpSettings(port=inbox.port, sender="churnwatch@example.com"),
            retry_first_seconds=5,
            **settings,
        )
        return Dispatcher(
            alert_settings,
            routing_for(webhook, **(routing or {})),
            open_ledger(alert_settings.ledger_url),
            clock=clock,
            publish=publish,
        )

    build.clock = clock
    return build
