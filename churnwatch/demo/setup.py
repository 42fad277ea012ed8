"""What the demo prepares before it runs: its clock's allowed lateness, a churn
model trained on a simulated past, and the web inbox with logins made for it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from churnwatch.consumers.alerts.ledger import open_ledger
from churnwatch.consumers.web.app import WebServer
from churnwatch.consumers.web.users import add_user
from churnwatch.core.settings import Settings
from churnwatch.models.train import TrainResult
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.simulator import parse_start, simulate

#: The simulator streams live while the worker reads: an event still in the
#: producer's batch when the worker finds a topic read to the end would arrive
#: after its sweep. The demo's worker allows the event time of a second of
#: wall-clock time (at least a day), so on a busy machine too the demo's
#: warnings do not depend on timing (a day alone was seen to fall short).
DEMO_LATENESS_HOURS = 24.0
DEMO_SLACK_SECONDS = 1.0


def lateness_hours(settings: Settings, days_per_second: float) -> float:
    return max(
        settings.clock.allowed_lateness_hours,
        DEMO_LATENESS_HOURS,
        days_per_second * 24 * DEMO_SLACK_SECONDS,
    )


#: The demo's model learns from another simulated company (another seed), as a
#: real deployment's model learns from the company's own past, not its future.
#: That company has a longer history and at least 200 customers, so that its
#: earlier cutoffs already see churners leave (the time split needs them).
DEMO_MODEL_SEED_OFFSET = 1000
DEMO_MODEL_MIN_CUSTOMERS = 200
DEMO_MODEL_HISTORY_FACTOR = 2


def train_demo_model(settings: Settings, customers: int, registry: Path) -> TrainResult:
    """Train and promote a churn model on a simulated past; deterministic."""
    from churnwatch.core.registry import promote
    from churnwatch.models.train import train

    sim = settings.simulator
    past, _ = simulate(
        max(customers, DEMO_MODEL_MIN_CUSTOMERS),
        sim.seed + DEMO_MODEL_SEED_OFFSET,
        parse_start(sim.start),
        sim.days * DEMO_MODEL_HISTORY_FACTOR,
        sim.owners,
        0,
    )
    result = train(
        [decode_event(e.payload) for e in past], settings, registry, "a simulated past company"
    )
    promote(registry, result.version)
    return result


def start_web(settings: Settings, ledger_url: str, say: Any) -> WebServer:
    """The inbox on the demo's ledger, with a rep and a manager made for the demo
    (fresh passwords each run, printed here)."""
    sessions = open_ledger(ledger_url)
    logins = {
        "rep1": ("rep", "rep1@sales.example.com", secrets.token_urlsafe(9)),
        "manager": ("manager", "", secrets.token_urlsafe(9)),
    }
    with sessions.begin() as session:
        for name, (role, owner, password) in logins.items():
            add_user(session, name, password, role, owner)
    server = WebServer(settings).start()
    say(f"web inbox on {server.url}; demo logins:")
    for name, (role, owner, password) in logins.items():
        whose = f"customers of {owner}" if owner else "the whole team"
        say(f"  {name} / {password}   ({role}: {whose})")
    return server
