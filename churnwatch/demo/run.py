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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.consumers.alerts.ledger import open_ledger
from churnwatch.consumers.consistency import live_states
from churnwatch.consumers.warnings_view import format_warning, tail_warnings
from churnwatch.consumers.web.app import WebServer
from churnwatch.core.apache_kafka import ApacheKafkaCluster, pinned_version
from churnwatch.core.broker import EmbeddedBroker, free_port, port_is_free, start_child, stop_child
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.settings import Settings
from churnwatch.core.topics import ensure_topics
from churnwatch.demo.setup import lateness_hours, start_web, train_demo_model
from churnwatch.demo.tally import (
    Tally,
    dead_letter_count,
    events_processed,
    health_summary,
    notification_summary,
    outbox_due,
    summarise,
    warnings_not_taken,
)
from churnwatch.models.train import beats_baselines
from churnwatch.pipeline.events import WarningRecord
from churnwatch.producers.produce import ProduceStats, produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate, write_ground_truth

#: How often the demo prints its progress.
PROGRESS_SECONDS = 5.0
#: How long the warnings must stay unchanged before a processed history counts
#: as notified (unless warnings or notifications still wait), and at most.
QUIET_SECONDS = 5.0
QUIET_AT_MOST_SECONDS = 60.0


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
    broker: str = "tansu",
) -> bool:
    """Run the demo; True if it ran to the end (or the duration) without failing.

    With ``web`` the inbox serves the demo's ledger and live states, with a rep
    and a manager made for the demo; with ``keep_serving`` it goes on serving
    after the summary until Ctrl-C, so one can click through the warnings.
    ``broker`` is ``tansu`` (embedded, memory only) or ``apache-kafka`` (a one-node
    KRaft cluster from Maven Central's jars; needs Java).
    """
    say = functools.partial(print, flush=True)  # progress shows at once, even into a pipe
    signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = Demo(settings, say, summary_path, customers, days_per_second, with_model, web, broker)
    interrupted = failed = False
    try:
        demo.start(show_warnings)
        failed = not demo.watch(duration)
        if keep_serving and demo.web_server is not None and not failed:
            demo.summarise()
            demo.serve()
            failed = True  # a child stopped while serving
    except KeyboardInterrupt:
        interrupted = demo.summary is None  # Ctrl-C while serving after the summary is the way out
        say("\ninterrupted: stopping" if interrupted else "\nstopping")
    finally:
        demo.stop()
    if interrupted:
        raise SystemExit(130)
    return not failed


class Demo:
    """The demo's parts, from the simulated history to the processes that run it."""

    def __init__(
        self,
        settings: Settings,
        say: Callable[[str], None],
        summary_path: Path | None,
        customers: int | None,
        days_per_second: float,
        with_model: bool,
        web: bool,
        broker: str = "tansu",
    ) -> None:
        self.say = say
        self.summary_path = summary_path
        self.days_per_second = days_per_second
        self.started = time.monotonic()
        host, port = settings.broker.host, settings.broker.port
        if not port_is_free(host, port):
            port = free_port(host)
            say(f"port {settings.broker.port} is busy; the demo broker uses {port} instead")
        self.metrics_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="churnwatch-demo-"))
        self.registry = self.workdir / "registry"
        self.ledger_url = f"sqlite:///{self.workdir / 'alerts.db'}"
        self.settings = settings = self._settings(settings, f"{host}:{port}", web)
        sim = settings.simulator
        self.events, self.truth = simulate(
            customers or sim.customers,
            sim.seed,
            parse_start(sim.start),
            sim.days,
            sim.owners,
            sim.malformed,
        )
        write_ground_truth(self.truth, self.workdir / "ground_truth.csv")
        self.model_info: dict[str, object] = {"model_version": None}
        if with_model:
            self._train()
        say(
            f"simulating {len(self.truth)} customers ({sum(t.churned for t in self.truth)} "
            f"will churn) over {sim.days} days: {len(self.events)} events at "
            f"{days_per_second:g} simulated days/s"
        )
        self.web = web
        self.broker: EmbeddedBroker | ApacheKafkaCluster
        if broker == "apache-kafka":
            say(f"Apache Kafka {pinned_version()} (one KRaft node) as the broker")
            self.broker = ApacheKafkaCluster(self.workdir / "apache-kafka", ports=[port])
        else:
            self.broker = EmbeddedBroker(host, port, settings.broker.startup_timeout_seconds)
        self.worker: subprocess.Popen[bytes] | None = None
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.worker_log = self.workdir / "worker.log"
        self.dispatcher_log = self.workdir / "alerts.log"
        self.inbox = LocalInbox()
        self.ledger: sessionmaker[Session] | None = None
        self.web_server: WebServer | None = None
        self.stopping = threading.Event()
        self.tally = Tally()
        self.stats = ProduceStats()
        self.threads: list[threading.Thread] = []
        self.producer_error: list[BaseException] = []
        self.processed = 0
        self.summary: dict[str, Any] | None = None

    def _settings(self, settings: Settings, bootstrap: str, web: bool) -> Settings:
        """The demo's settings: its broker, its ledger, its web port and session secret."""
        web_port = free_port(settings.web.host) if web else 0
        if web and port_is_free(settings.web.host, settings.web.port):
            web_port = settings.web.port
        web_url = f"http://{settings.web.host}:{web_port}" if web else ""
        return settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
                "alerts": settings.alerts.model_copy(update={"ledger_url": self.ledger_url}),
                "web": settings.web.model_copy(
                    update={
                        "port": web_port,
                        "base_url": web_url,
                        "session_secret": SecretStr(secrets.token_urlsafe(32)),
                        # the dispatcher's mails carry one-click links this web follows
                        "link_secret": SecretStr(secrets.token_urlsafe(32))
                        if web
                        else SecretStr(""),
                    }
                ),
            }
        )

    def _train(self) -> None:
        self.say("training the churn model on a simulated past (another company, same kinds) ...")
        trained = train_demo_model(self.settings, len(self.truth), self.registry)
        margin = beats_baselines(trained.card)
        auc = trained.card["metrics"]["model"]["roc_auc"]
        self.model_info = {
            "model_version": trained.version,
            "model_roc_auc": auc,
            "model_minus_best_baseline": margin,
        }
        self.say(
            f"model {trained.version}: test ROC-AUC {auc:.3f} ({margin:+.3f} against the "
            "best baseline); promoted"
        )

    # -- start, watch, serve, stop -------------------------------------------------

    def start(self, show_warnings: bool) -> None:
        """The broker, the worker, the dispatcher, the web inbox, the simulator and the view."""
        settings, say = self.settings, self.say
        self.broker.start()
        broker_pid = self.broker.proc.pid if self.broker.proc else "?"
        say(f"broker ready on {self.broker.bootstrap_servers} (pid {broker_pid})")
        ensure_topics(settings)
        env = dict(
            os.environ,
            CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS=self.broker.bootstrap_servers,
            CHURNWATCH_WORKER__DATA_DIR=str(self.workdir / "worker"),
            CHURNWATCH_WORKER__METRICS_PORT=str(self.metrics_port),
            CHURNWATCH_CLOCK__MODE="event",
            CHURNWATCH_CLOCK__ALLOWED_LATENESS_HOURS=str(
                lateness_hours(settings, self.days_per_second)
            ),
            CHURNWATCH_MODEL__REGISTRY=str(self.registry),
        )
        if isinstance(self.broker, ApacheKafkaCluster):
            # the simulator writes while the worker reads: Apache Kafka reports a topic
            # read to its end at once, so the event clock waits a moment for it
            env["CHURNWATCH_CLOCK__IDLE_TOPIC_WAIT_SECONDS"] = "1"
        command = [sys.executable, "-m", "churnwatch.cli"]
        self.worker = start_child([*command, "worker"], env=env, log=self.worker_log)
        say(f"worker started (pid {self.worker.pid}, log {self.worker_log})")
        self.inbox.start()
        alerts_env = dict(
            env,
            CHURNWATCH_WEB__BASE_URL=settings.web.base_url,
            CHURNWATCH_WEB__LINK_SECRET=settings.web.link_secret.get_secret_value(),
            CHURNWATCH_ALERTS__LEDGER_URL=self.ledger_url,
            CHURNWATCH_ALERTS__SMTP__HOST=self.inbox.host,
            CHURNWATCH_ALERTS__SMTP__PORT=str(self.inbox.port),
            CHURNWATCH_ALERTS__SMTP__SECURITY="insecure",
        )
        self.dispatcher = start_child(
            [*command, "alerts", "run"], env=alerts_env, log=self.dispatcher_log
        )
        say(
            f"alert dispatcher started (pid {self.dispatcher.pid}, log {self.dispatcher_log}); "
            f"owners' mail goes to a local inbox on {self.inbox.host}:{self.inbox.port}"
        )
        if self.web:
            self.web_server = start_web(settings, self.ledger_url, say)

        def on_warning(w: WarningRecord) -> None:
            self.tally.add(w)
            if show_warnings and w.status == "opened":
                say(format_warning(w))

        def producer() -> None:
            paced = iter_paced(self.events, self.days_per_second)
            try:
                produce(settings, paced, self.stopping, stats=self.stats)
            except Exception as exc:
                self.producer_error.append(exc)

        self.threads = [
            threading.Thread(target=producer, name="simulator", daemon=True),
            threading.Thread(
                target=tail_warnings,
                args=(settings, self.stopping, on_warning),
                name="view",
                daemon=True,
            ),
        ]
        for thread in self.threads:
            thread.start()
        say("simulator and warnings view running; Ctrl-C stops everything")

    def watch(self, duration: float | None) -> bool:
        """Until the history is processed and notified (or the duration is up): True,
        or False when a part failed (its log is shown)."""
        worker, dispatcher = self._children()
        say, tally = self.say, self.tally
        last_progress = 0.0
        while True:
            time.sleep(0.5)
            elapsed = time.monotonic() - self.started
            if self._exited(worker, "the worker", self.worker_log):
                return False
            self.processed = events_processed(self.metrics_port) or self.processed
            producing = self.threads[0].is_alive()
            if self.producer_error:
                say(f"the simulator failed: {self.producer_error[0]!r}")
                return False
            if elapsed - last_progress >= PROGRESS_SECONDS:
                last_progress = elapsed
                say(
                    f"[{elapsed:5.0f}s] simulated up to {self.stats.last_event_time or '...'}: "
                    f"produced {self.stats.sent}, processed {self.processed}, "
                    f"warnings opened {sum(tally.opened_by_type.values())}"
                )
            if self._exited(dispatcher, "the alert dispatcher", self.dispatcher_log):
                return False
            caught_up = not producing and self.processed >= self.stats.sent > 0
            if caught_up and time.monotonic() - tally.last_change > 3 and self._notified():
                say("the simulated history is fully processed and notified")
                return True
            if duration is not None and elapsed >= duration:
                say(f"--duration {duration:g}s reached")
                return True

    def _exited(self, child: subprocess.Popen[bytes], name: str, log: Path) -> bool:
        if child.poll() is None:
            return False
        self.say(f"{name} exited (code {child.returncode}); its log:")
        self.say(log.read_text(errors="replace")[-3000:])
        return True

    def _notified(self) -> bool:
        """Whether the dispatcher has taken every warning and delivered what is due
        (or the warnings have been quiet for long enough)."""
        quiet_for = time.monotonic() - self.tally.last_change
        if self.ledger is None:  # the dispatcher created the tables long ago
            self.ledger = open_ledger(self.ledger_url)
        if quiet_for >= QUIET_AT_MOST_SECONDS:
            return True
        if quiet_for < QUIET_SECONDS:
            return False
        return not (warnings_not_taken(self.settings) or outbox_due(self.ledger))

    def serve(self) -> None:
        """Keep the web inbox serving the demo's warnings until Ctrl-C (or a child stops)."""
        worker, dispatcher = self._children()
        url = self.web_server.url if self.web_server else ""
        self.say(
            f"\nthe web inbox keeps serving on {url} with the demo's warnings "
            "(logins above); Ctrl-C stops everything"
        )
        while worker.poll() is None and dispatcher.poll() is None:
            time.sleep(1)

    def _children(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        if self.worker is None or self.dispatcher is None:
            raise RuntimeError("the demo's worker and dispatcher have not started")
        return self.worker, self.dispatcher

    def summarise(self) -> dict[str, Any]:
        """The summary (printed, and written to the summary path if any)."""
        dead = 0
        if self.broker.proc is not None:
            try:
                dead = dead_letter_count(self.settings)
            except Exception as exc:  # the summary is still worth writing
                self.say(f"could not count dead letters: {exc}")
        out = summarise(self.truth, self.tally, self.stats, self.processed, dead)
        if self.broker.proc is not None:
            try:
                out.update(health_summary(self.truth, live_states(self.settings)))
            except Exception as exc:  # the summary is still worth writing
                self.say(f"could not read the health scores: {exc}")
        out.update(self.model_info)
        if self.dispatcher is not None:
            out.update(
                notification_summary(self.inbox, self.ledger or open_ledger(self.ledger_url))
            )
        out["seconds"] = round(time.monotonic() - self.started, 1)
        self.say(json.dumps({k: v for k, v in out.items() if k != "by_profile"}, indent=2))
        if self.summary_path is not None:
            self.summary_path.parent.mkdir(parents=True, exist_ok=True)
            self.summary_path.write_text(json.dumps(out, indent=2), encoding="utf-8")
            self.say(f"summary written to {self.summary_path}")
        self.summary = out
        return out

    def stop(self) -> None:
        """Stop everything (the summary first, if not made yet); nothing is left behind."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=35)
        if self.summary is None:
            self.summarise()
        if self.web_server is not None:
            self.web_server.stop()
        if self.dispatcher is not None:
            stop_child(self.dispatcher, timeout=20)
        if self.worker is not None:
            stop_child(self.worker, timeout=20)
        self.broker.stop()
        self.inbox.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
