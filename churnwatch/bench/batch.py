"""The batch path's and the web inbox's benchmarks (``--backtest``, ``--web``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from churnwatch.bench.probes import machine
from churnwatch.core.settings import Settings
from churnwatch.producers.simulator import parse_start, simulate


def run_backtest_bench(
    settings: Settings,
    customers: int,
    days: int,
    with_model: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time a backtest of the simulated history, as ``churnwatch backtest`` runs it."""
    from churnwatch.models.backtest import backtest
    from churnwatch.pipeline.events import decode_event

    sim = settings.simulator
    events, _truth = simulate(
        customers, sim.seed, parse_start(sim.start), days, sim.owners, malformed=0
    )
    decoded = [decode_event(e.payload) for e in events]
    say(f"backtesting {len(decoded):,} events of {customers} customers over {days} days ...")
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-bench-"))
    try:
        started = time.perf_counter()
        summary = backtest(
            decoded,
            settings.warnings,
            settings.clock.sweep_every_hours * 3600,
            90,
            workdir,
            settings.model if with_model else None,
            progress=lambda line: say(f"  {time.perf_counter() - started:6.1f} s  {line}"),
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "customers": customers,
        "days": days,
        "events": len(decoded),
        "model": "walk-forward" if with_model else "none (rules only)",
        "seconds": round(seconds, 1),
        "events_per_second": round(len(decoded) / seconds),
        "churns": summary["churns"],
    }


def run_web_bench(
    settings: Settings,
    customers: int = 2000,
    days: int = 400,
    rounds: int = 7,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time the web inbox's pages over HTTP: a ledger with one open warning of every
    type for each of ``customers`` simulated customers (10,000 for 2,000), their live
    states held as the inbox holds the workers' (no broker: filled in process)."""
    import statistics
    from datetime import UTC, datetime

    import requests

    from churnwatch.consumers.alerts.ledger import Customer, Episode, open_ledger
    from churnwatch.consumers.web.app import WebServer
    from churnwatch.consumers.web.live import LiveStates
    from churnwatch.consumers.web.users import add_user
    from churnwatch.pipeline.apply import apply_event
    from churnwatch.pipeline.events import WARNING_TYPES, CustomerUpdated, decode_event
    from churnwatch.pipeline.state import to_epoch

    sim = settings.simulator
    events, truth = simulate(customers, sim.seed, parse_start(sim.start), days, sim.owners, 0)
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-web-bench-"))
    settings = settings.model_copy(
        update={
            "alerts": settings.alerts.model_copy(
                update={"ledger_url": f"sqlite:///{workdir / 'alerts.db'}"}
            )
        }
    )
    sessions = open_ledger(settings.alerts.ledger_url)
    now = datetime.now(UTC)
    owners: dict[str, str] = {}
    live = LiveStates(settings)
    for sim_event in events:
        event = decode_event(sim_event.payload)
        if isinstance(event, CustomerUpdated):
            owners[event.customer_id] = event.owner
        apply_event(live.block.state(event.customer_id), event)
        live.partition_of[event.customer_id] = 0
    live.progress[0] = to_epoch(events[-1].ts)
    with sessions.begin() as session:
        add_user(session, "manager", "bench-password", "manager")
        add_user(session, "rep", "bench-password", "rep", owners[truth[0].customer_id])
        for k, t in enumerate(truth):
            owner = owners.get(t.customer_id, "")
            session.add(Customer(customer_id=t.customer_id, name=t.customer_id, owner=owner))
            for i, warning_type in enumerate(WARNING_TYPES):
                session.add(
                    Episode(
                        warning_id=f"{t.customer_id}-{warning_type}",
                        customer_id=t.customer_id,
                        customer_name=f"Customer {t.customer_id}",
                        owner=owner,
                        segment="standard",
                        warning_type=warning_type,
                        severity=("low", "medium", "high", "critical")[(k + i) % 4],
                        status="open",
                        opened_at=now - timedelta(days=(k + i) % 90),
                        summary="orders down 60% against the usual 8 weeks",
                        evidence={"revenue_52w": float(1000 + k), "amount_recent": 100.0},
                        action="Call the customer this week.",
                        churn_probability=0.8 if warning_type == "churn_risk" else None,
                        received_at=now,
                    )
                )
    warnings = customers * len(WARNING_TYPES)
    say(f"{warnings:,} open warnings for {customers:,} customers; serving ...")
    server = WebServer(settings, port=0, live=live).start()
    base = server.url

    def login(user: str) -> requests.Session:
        browser = requests.Session()
        page = browser.get(f"{base}/login", timeout=30).text
        token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        browser.post(
            f"{base}/login",
            data={"csrf": token, "username": user, "password": "bench-password"},
            timeout=30,
        )
        return browser

    def timed(browser: requests.Session, path: str) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            answer = browser.get(base + path, timeout=60)
            times.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{path} answered {answer.status_code}")
        return round(statistics.median(times), 1)

    try:
        manager, rep = login("manager"), login("rep")
        customer = truth[0].customer_id
        pages = {
            f"inbox, manager ({warnings:,} warnings, first page)": timed(manager, "/inbox"),
            "inbox, manager, filtered by type and search": timed(
                manager, "/inbox?type=sales_drop&q=C0001"
            ),
            "inbox, one rep": timed(rep, "/inbox"),
            "customer page (live features, charts)": timed(rep, f"/customers/{customer}"),
            "team view": timed(manager, "/team"),
            "team CSV": timed(manager, "/team.csv"),
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "customers": customers,
        "open_warnings": warnings,
        "rounds": rounds,
        "median_ms": pages,
    }
