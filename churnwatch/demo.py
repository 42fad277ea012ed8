"""The whole pipeline on loopback: ``churnwatch demo`` (what ``make demo`` runs).

Starts the embedded broker, the Faust worker and the alert dispatcher (child
processes, the dispatcher mailing a local inbox), the simulator
on an accelerated clock and the warnings view; prints progress; stops
everything on Ctrl-C or when done, leaving no process behind; optionally
writes a JSON summary that compares the warnings with the simulator's truth.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.core.broker import EmbeddedBroker, free_port, port_is_free, start_child, stop_child
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic, end_offsets, ensure_topics
from consumers.alerts.ledger import open_ledger
from consumers.warnings_view import format_warning, tail_warnings
from consumers.web.app import WebServer
from consumers.web.users import add_user
from models.train import TrainResult, beats_baselines
from pipeline.events import WarningRecord, decode_event
from producers.produce import ProduceStats, produce
from producers.simulator import (
    GroundTruth,
    iter_paced,
    parse_start,
    simulate,
    write_ground_truth,
)


@dataclass
class Tally:
    """What the warnings view has seen."""

    opened_by_type: Counter[str] = field(default_factory=Counter)
    resolved: int = 0
    opened_for: dict[str, list[tuple[str, datetime]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seen_ids: set[tuple[str, str, str]] = field(default_factory=set)
    escalated: int = 0
    last_change: float = field(default_factory=time.monotonic)

    def add(self, w: WarningRecord) -> None:
        key = (w.warning_id, w.status, w.severity if w.status == "escalated" else "")
        if key in self.seen_ids:
            return  # redelivered after a worker restart: the same episode
        self.seen_ids.add(key)
        self.last_change = time.monotonic()
        if w.status == "opened":
            self.opened_by_type[w.warning_type] += 1
            self.opened_for[w.customer_id].append((w.warning_type, w.opened_at))
        elif w.status == "escalated":
            self.escalated += 1
        else:
            self.resolved += 1


def events_processed(metrics_port: int) -> int | None:
    """Messages the worker has consumed from the event topics, from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "churnwatch_events_consumed":
            total += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("topic") != Topic.TICKS.value
            )
    return int(total)


def warnings_not_taken(settings: Settings) -> int:
    """Warning records the alert dispatcher has not yet committed (taken into its ledger)."""
    consumer = KafkaConsumer(
        group_id=settings.alerts.group_id,
        enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    try:
        name = settings.topic(Topic.WARNINGS)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        ends = end_offsets(settings, tps)
        return sum(max(0, end - (consumer.committed(tp) or 0)) for tp, end in ends.items())
    finally:
        consumer.close()


def dead_letter_count(settings: Settings) -> int:
    consumer = KafkaConsumer(group_id=None, **settings.kafka_client_options())
    try:
        name = settings.topic(Topic.DEAD_LETTERS)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        return sum(end_offsets(settings, tps).values())
    finally:
        consumer.close()


def summarise(
    truth: list[GroundTruth], tally: Tally, stats: ProduceStats, processed: int, dead: int
) -> dict[str, Any]:
    """The demo summary: how well the warnings match the simulator's truth.

    A churner counts as warned when a warning opened on or after the onset of
    its change in behaviour; a steady customer (never churns, including the
    seasonal and one-off look-alikes) counts as warned by any warning at all.
    """
    churners = [t for t in truth if t.churned]
    steady = [t for t in truth if not t.churned]

    def warned_after_onset(t: GroundTruth) -> bool:
        onset = t.onset
        return any(onset is not None and at >= onset for _, at in tally.opened_for[t.customer_id])

    by_profile: dict[str, dict[str, int]] = {}
    for t in truth:
        row = by_profile.setdefault(t.profile, {"customers": 0, "warned": 0})
        row["customers"] += 1
        warned = warned_after_onset(t) if t.churned else bool(tally.opened_for[t.customer_id])
        row["warned"] += warned
    return {
        "events_produced": stats.sent,
        "events_malformed_sent": stats.malformed,
        "events_processed": processed,
        "dead_letters": dead,
        "warnings": dict(sorted(tally.opened_by_type.items())),
        "warnings_resolved": tally.resolved,
        "warnings_escalated": tally.escalated,
        "churners_total": len(churners),
        "churners_warned": sum(warned_after_onset(t) for t in churners),
        "steady_total": len(steady),
        "steady_warned": sum(bool(tally.opened_for[t.customer_id]) for t in steady),
        "by_profile": dict(sorted(by_profile.items())),
    }


def notification_summary(inbox: LocalInbox, ledger: sessionmaker[Session]) -> dict[str, Any]:
    """What reached the demo's inbox, and the ledger's account of every notification."""
    from sqlalchemy import func, select

    from consumers.alerts.ledger import Notification

    subjects = Counter(str(m["Subject"]) for m in inbox.received())
    with ledger() as session:
        rows = session.execute(
            select(Notification.status, func.count(Notification.id)).group_by(Notification.status)
        ).all()
    return {
        "notifications_sent": sum(subjects.values()),
        "duplicate_notifications": sum(n - 1 for n in subjects.values() if n > 1),
        "notifications_by_status": {status: count for status, count in sorted(rows)},
        "notified_owners": len({str(m["To"]) for m in inbox.received()}),
    }


def outbox_due(ledger: sessionmaker[Session]) -> int:
    """Notifications due now and not yet delivered (not those waiting for a window)."""
    from datetime import UTC

    from sqlalchemy import func, select

    from consumers.alerts.ledger import Notification

    with ledger() as session:
        query = select(func.count(Notification.id)).where(
            Notification.status == "pending", Notification.due_at <= datetime.now(UTC)
        )
        return int(session.scalar(query) or 0)


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
    from models.train import train

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


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(
    settings: Settings,
    duration: float | None = None,
    summary_path: Path | None = None,
    customers: int | None = None,
    days_per_second: float = 12.0,
    show_warnings: bool = True,
    with_model: bool = True,
    web: bool = True,
    keep_serving: bool = False,
) -> bool:
    """Run the demo; True if it ran to the end (or the duration) without failing.

    With ``web`` the inbox serves the demo's ledger and live states, with a rep
    and a manager made for the demo; with ``keep_serving`` it goes on serving
    after the summary until Ctrl-C, so one can click through the warnings.
    """
    say = functools.partial(print, flush=True)  # progress shows at once, even into a pipe
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    host = settings.broker.host
    port = settings.broker.port
    if not port_is_free(host, port):
        port = free_port(host)
        say(f"port {settings.broker.port} is busy; the demo broker uses {port} instead")
    metrics_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-demo-"))
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"{host}:{port}"})}
    )
    sim = settings.simulator
    events, truth = simulate(
        customers or sim.customers,
        sim.seed,
        parse_start(sim.start),
        sim.days,
        sim.owners,
        sim.malformed,
    )
    write_ground_truth(truth, workdir / "ground_truth.csv")
    registry = workdir / "registry"
    model_info: dict[str, object] = {"model_version": None}
    if with_model:
        say("training the churn model on a simulated past (another company, same kinds) ...")
        trained = train_demo_model(settings, len(truth), registry)
        margin = beats_baselines(trained.card)
        model_info = {
            "model_version": trained.version,
            "model_roc_auc": trained.card["metrics"]["model"]["roc_auc"],
            "model_minus_best_baseline": margin,
        }
        say(
            f"model {trained.version}: test ROC-AUC "
            f"{trained.card['metrics']['model']['roc_auc']:.3f} ({margin:+.3f} against the "
            "best baseline); promoted"
        )
    say(
        f"simulating {len(truth)} customers ({sum(t.churned for t in truth)} will churn) over "
        f"{sim.days} days: {len(events)} events at {days_per_second:g} simulated days/s"
    )
    broker = EmbeddedBroker(host, port, settings.broker.startup_timeout_seconds)
    worker = None
    dispatcher = None
    inbox = LocalInbox()
    ledger_url = f"sqlite:///{workdir / 'alerts.db'}"
    ledger: sessionmaker[Session] | None = None
    stop = threading.Event()
    tally = Tally()
    stats = ProduceStats()
    threads: list[threading.Thread] = []
    interrupted = False
    failed = False
    processed = 0
    web_server: WebServer | None = None
    web_port = free_port(settings.web.host) if web else 0
    if web and port_is_free(settings.web.host, settings.web.port):
        web_port = settings.web.port
    web_url = f"http://{settings.web.host}:{web_port}" if web else ""
    settings = settings.model_copy(
        update={
            "alerts": settings.alerts.model_copy(update={"ledger_url": ledger_url}),
            "web": settings.web.model_copy(
                update={
                    "port": web_port,
                    "base_url": web_url,
                    "session_secret": SecretStr(secrets.token_urlsafe(32)),
                }
            ),
        }
    )
    summary: dict[str, Any] | None = None

    def summarised() -> dict[str, Any]:
        dead = 0
        if broker.proc is not None:
            try:
                dead = dead_letter_count(settings)
            except Exception as exc:  # the summary is still worth writing
                say(f"could not count dead letters: {exc}")
        out = summarise(truth, tally, stats, processed, dead)
        out.update(model_info)
        if dispatcher is not None:
            out.update(notification_summary(inbox, ledger or open_ledger(ledger_url)))
        out["seconds"] = round(time.monotonic() - started, 1)
        say(json.dumps({k: v for k, v in out.items() if k != "by_profile"}, indent=2))
        if summary_path is not None:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(out, indent=2), encoding="utf-8")
            say(f"summary written to {summary_path}")
        return out

    try:
        broker.start()
        broker_pid = broker.proc.pid if broker.proc else "?"
        say(f"broker ready on {broker.bootstrap_servers} (pid {broker_pid})")
        ensure_topics(settings)
        env = dict(
            os.environ,
            CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            CHURNWATCH_WORKER__DATA_DIR=str(workdir / "worker"),
            CHURNWATCH_WORKER__METRICS_PORT=str(metrics_port),
            CHURNWATCH_CLOCK__MODE="event",
            CHURNWATCH_CLOCK__ALLOWED_LATENESS_HOURS=str(lateness_hours(settings, days_per_second)),
            CHURNWATCH_MODEL__REGISTRY=str(registry),
        )
        worker_log = workdir / "worker.log"
        worker = start_child(
            [sys.executable, "-m", "churnwatch.cli", "worker"], env=env, log=worker_log
        )
        say(f"worker started (pid {worker.pid}, log {worker_log})")
        inbox.start()
        alerts_env = dict(
            env,
            CHURNWATCH_WEB__BASE_URL=web_url,
            CHURNWATCH_ALERTS__LEDGER_URL=ledger_url,
            CHURNWATCH_ALERTS__SMTP__HOST=inbox.host,
            CHURNWATCH_ALERTS__SMTP__PORT=str(inbox.port),
            CHURNWATCH_ALERTS__SMTP__SECURITY="insecure",
        )
        dispatcher_log = workdir / "alerts.log"
        dispatcher = start_child(
            [sys.executable, "-m", "churnwatch.cli", "alerts", "run"],
            env=alerts_env,
            log=dispatcher_log,
        )
        say(
            f"alert dispatcher started (pid {dispatcher.pid}, log {dispatcher_log}); "
            f"owners' mail goes to a local inbox on {inbox.host}:{inbox.port}"
        )
        if web:
            web_server = start_web(settings, ledger_url, say)

        def on_warning(w: WarningRecord) -> None:
            tally.add(w)
            if show_warnings and w.status == "opened":
                say(format_warning(w))

        producer_error: list[BaseException] = []

        def producer() -> None:
            try:
                produce(settings, iter_paced(events, days_per_second), stop, stats=stats)
            except Exception as exc:
                producer_error.append(exc)

        threads = [
            threading.Thread(target=producer, name="simulator", daemon=True),
            threading.Thread(
                target=tail_warnings, args=(settings, stop, on_warning), name="view", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        say("simulator and warnings view running; Ctrl-C stops everything")
        last_progress = 0.0
        while True:
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            if worker.poll() is not None:
                say(f"the worker exited (code {worker.returncode}); its log:")
                say(worker_log.read_text(errors="replace")[-3000:])
                failed = True
                break
            processed = events_processed(metrics_port) or processed
            producing = threads[0].is_alive()
            if producer_error:
                say(f"the simulator failed: {producer_error[0]!r}")
                failed = True
                break
            if elapsed - last_progress >= 5:
                last_progress = elapsed
                say(
                    f"[{elapsed:5.0f}s] simulated up to {stats.last_event_time or '...'}: "
                    f"produced {stats.sent}, processed {processed}, "
                    f"warnings opened {sum(tally.opened_by_type.values())}"
                )
            if dispatcher.poll() is not None:
                say(f"the alert dispatcher exited (code {dispatcher.returncode}); its log:")
                say(dispatcher_log.read_text(errors="replace")[-3000:])
                failed = True
                break
            caught_up = not producing and processed >= stats.sent > 0
            if caught_up and time.monotonic() - tally.last_change > 3:
                quiet_for = time.monotonic() - tally.last_change
                if ledger is None:  # the dispatcher created the tables long ago
                    ledger = open_ledger(ledger_url)
                if quiet_for < 60 and (
                    quiet_for < 5 or warnings_not_taken(settings) or outbox_due(ledger)
                ):
                    continue  # let the dispatcher take every warning and deliver what is due
                say("the simulated history is fully processed and notified")
                break
            if duration is not None and elapsed >= duration:
                say(f"--duration {duration:g}s reached")
                break
        if keep_serving and web_server is not None and not failed:
            summary = summarised()
            say(
                f"\nthe web inbox keeps serving on {web_server.url} with the demo's warnings "
                "(logins above); Ctrl-C stops everything"
            )
            while worker.poll() is None and dispatcher.poll() is None:
                time.sleep(1)
            failed = True  # a child stopped while serving
    except KeyboardInterrupt:
        interrupted = summary is None  # Ctrl-C while serving after the summary is the way out
        say("\ninterrupted: stopping" if interrupted else "\nstopping")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
        if summary is None:
            summary = summarised()
        if web_server is not None:
            web_server.stop()
        if dispatcher is not None:
            stop_child(dispatcher, timeout=20)
        if worker is not None:
            stop_child(worker, timeout=20)
        broker.stop()
        inbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        raise SystemExit(130)
    return not failed
