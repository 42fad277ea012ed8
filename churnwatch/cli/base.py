"""The ``churnwatch`` command group and what its commands share.

Exit codes: 0 ok, 1 runtime failure (broker unreachable, ...), 2 bad usage or
bad settings (the message names the key).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from churnwatch.core.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    from churnwatch.producers.produce import ProduceStats
    from churnwatch.producers.simulator import SimEvent


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CHURNWATCH_CONFIG",
    help="Settings file (default: configs/default.yaml). CHURNWATCH_* variables override it.",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """churnwatch: early warning for customers who are slipping away.

    Start with `churnwatch demo`: it runs the whole pipeline on this machine.
    """
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        ctx.obj = load_settings(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM; install it before announcing readiness."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve_metrics(port: int, host: str, owner: str) -> None:
    """Prometheus /metrics on ``port`` (0: none): the metrics this kind of process
    owns (``owner``: a registry of :mod:`pipeline.metrics`)."""
    if port:
        from prometheus_client import start_http_server

        from churnwatch.pipeline import metrics

        start_http_server(port, addr=host, registry=getattr(metrics, owner))


def ensure_topics_or_fail(settings: Settings) -> list[str]:
    """Create the missing topics (a clear error if the broker is unreachable)."""
    from churnwatch.core.topics import TopicsError, ensure_topics

    try:
        return ensure_topics(settings)
    except TopicsError as exc:
        raise click.ClickException(str(exc)) from exc


def transactions_or_fail(settings: Settings) -> None:
    """A clear error unless the broker runs Kafka transactions."""
    from churnwatch.core.topics import TopicsError, require_transactions

    try:
        require_transactions(settings)
    except TopicsError as exc:
        raise click.ClickException(str(exc)) from exc


def produce_with_progress(
    settings: Settings, messages: list[SimEvent], days_per_second: float, label: str
) -> ProduceStats:
    """Produce ``messages`` on the accelerated clock with a progress bar; SIGTERM stops."""
    from churnwatch.producers.produce import produce
    from churnwatch.producers.simulator import iter_paced

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with click.progressbar(length=len(messages), label=label) as bar:
        done = 0

        def progress(stats: ProduceStats) -> None:
            nonlocal done
            bar.update(stats.sent - done)
            done = stats.sent

        try:
            return produce(settings, iter_paced(messages, days_per_second), stop, progress)
        except KeyboardInterrupt:
            stop.set()
            raise
