"""What the dispatcher tests share: a test clock, a real HTTP webhook receiver, a
routing file and warning records (the fixtures are in ``tests/unit/conftest.py``)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

from sqlalchemy import select

from churnwatch.consumers.alerts.dispatcher import Dispatcher
from churnwatch.consumers.alerts.ledger import Notification
from churnwatch.consumers.alerts.routing import Routing
from churnwatch.core.broker import free_port
from churnwatch.pipeline.events import WarningRecord

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Webhook:
    """A real HTTP server standing in for a Slack/WeCom-style JSON webhook."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        #: (path, headers) of each POST, beside its body in ``received``
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.server: HTTPServer | None = None

    def start(self) -> None:
        received, requests = self.received, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                requests.append((self.path, dict(self.headers.items())))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def routing_for(webhook: Webhook, **extra) -> Routing:
    return Routing.model_validate(
        {
            "recipients": {
                "team": {"channels": [{"email": "team@example.com"}]},
                "finance": {
                    "channels": [{"webhook": f"http://127.0.0.1:{webhook.port}/hook"}],
                    "language": "zh-CN",
                },
                "manager": {
                    "channels": [{"email": "manager@example.com"}],
                    "window": {
                        "timezone": "Europe/London",
                        "hours": "08:00-18:00",
                        "weekdays_only": True,
                    },
                },
            },
            "fallback": "team",
            "rules": [
                {
                    "when": {"warning_type": ["overdue_debt"], "severity": ["critical"]},
                    "notify": ["finance"],
                },
                {"when": {"segment": ["key_account"]}, "notify": ["manager"]},
            ],
            "inhibit": [{"while_open": "overdue_debt", "hold": ["sales_drop"]}],
            **extra,
        }
    )


def record(
    wid: str = "w-1",
    status: str = "opened",
    warning_type: str = "sales_drop",
    customer: str = "C1",
    owner: str = "rep1@sales.example.com",
    severity: str = "medium",
    segment: str = "standard",
    revenue: float = 10_000.0,
    probability: float | None = None,
) -> WarningRecord:
    return WarningRecord(
        warning_id=wid,
        status=status,
        warning_type=warning_type,
        customer_id=customer,
        customer_name=f"Customer {customer}",
        owner=owner,
        segment=segment,
        severity=severity,
        opened_at=NOW,
        at=NOW,
        summary=f"{warning_type} summary for {customer}",
        evidence={"revenue_52w": revenue, "amount_recent": 1015.0},
        recommended_action="Call the customer this week.",
        churn_probability=probability,
    )


def statuses(dispatcher: Dispatcher) -> list[tuple[str, str, str]]:
    with dispatcher.sessions() as session:
        rows = session.scalars(select(Notification).order_by(Notification.id))
        return [(n.recipient, n.kind, n.status) for n in rows]
