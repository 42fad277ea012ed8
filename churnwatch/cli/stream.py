"""The live pipeline's commands: broker, topics, worker, simulate, replay, archive, warnings."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    pass


from churnwatch.cli.base import (
    cli,
    ensure_topics_or_fail,
    produce_with_progress,
    serve_metrics,
    settings_of,
    stop_on_signal,
    transactions_or_fail,
)


@cli.command()
@click.option(
    "--apache-kafka",
    is_flag=True,
    help="Run Apache Kafka (KRaft, the version pinned in configs/versions.env; needs Java, "
    "jars fetched with Maven on first use) instead of the embedded Tansu broker.",
)
@click.option(
    "--nodes",
    type=click.Choice(["1", "3"]),
    default="1",
    show_default=True,
    help="Apache Kafka nodes (3: replication factor 3, min.insync.replicas 2).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".churnwatch/apache-kafka"),
    show_default=True,
    help="Apache Kafka's logs, kept between runs (remove the folder to start afresh).",
)
@click.pass_context
def broker(ctx: click.Context, apache_kafka: bool, nodes: str, data_dir: Path) -> None:
    """Run a broker on this machine until Ctrl-C: the embedded Kafka-protocol broker
    (Tansu, memory only), or Apache Kafka with --apache-kafka."""
    from churnwatch.core.apache_kafka import ApacheKafkaCluster
    from churnwatch.core.broker import BrokerError, EmbeddedBroker

    b = settings_of(ctx).broker
    stop = stop_on_signal()  # before "ready": a client may stop us right after it
    running: EmbeddedBroker | ApacheKafkaCluster
    try:
        if apache_kafka:
            running = ApacheKafkaCluster(
                data_dir, int(nodes), host=b.host, ports=None if nodes == "3" else [b.port]
            )
            kept = f"Apache Kafka {running.version}, data in {data_dir}"
            click.echo(f"starting Apache Kafka {running.version} ({nodes} node(s)) in {data_dir}")
        else:
            running = EmbeddedBroker(b.host, b.port, b.startup_timeout_seconds)
            kept = "memory only"
        with running:
            click.echo(f"broker ready on {running.bootstrap_servers} ({kept}; Ctrl-C stops)")
            stop.wait()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("broker stopped")


@cli.group()
def topics() -> None:
    """Manage churnwatch's Kafka topics."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create the missing topics with the configured partition count."""
    created = ensure_topics_or_fail(settings_of(ctx))
    click.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none needed'}")


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the Faust worker (state, rules, warnings) until Ctrl-C."""
    from faust import Worker
    from threadpoolctl import threadpool_limits

    from churnwatch.pipeline.app import fewer_gc_passes, use_event_loop
    from churnwatch.pipeline.worker import create_app

    # The model scores a partition's customers per sweep: small batches, for
    # which one thread is faster than a pool that competes with Kafka I/O.
    threadpool_limits(1)
    settings = settings_of(ctx)
    use_event_loop(settings.worker.event_loop)
    ensure_topics_or_fail(settings)
    if settings.worker.processing_guarantee == "exactly_once":
        transactions_or_fail(settings)
    serve_metrics(settings.worker.metrics_port, settings.worker.metrics_host, "WORKER")
    pipeline = create_app(settings)
    click.echo(
        f"worker {settings.worker.app_id}: {settings.kafka.bootstrap_servers}, "
        f"clock={settings.clock.mode}, store={settings.worker.store}, "
        f"{settings.worker.processing_guarantee}"
    )
    runner = Worker(pipeline.app, loglevel=settings.worker.log_level)
    # Faust's start-up spinner turns the root logger to DEBUG for good (to spin
    # on every record), so every library's debug line is built and dropped
    # (aiokafka logs each message it sends: 2-3% of a worker's time in a profile).
    runner.spinner = None
    fewer_gc_passes()
    runner.execute_from_commandline()


@cli.command()
@click.option("--customers", type=click.IntRange(min=1), help="Number of customers.")
@click.option("--seed", type=int, help="Random seed; the same seed gives the same events.")
@click.option("--start", help="First simulated day, YYYY-MM-DD (UTC).")
@click.option("--days", type=click.IntRange(min=60), help="Simulated days.")
@click.option(
    "--days-per-second",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Accelerated clock: simulated days per real second; 0 = as fast as possible.",
)
@click.option(
    "--ground-truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write who churns and how (CSV).",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    customers: int | None,
    seed: int | None,
    start: str | None,
    days: int | None,
    days_per_second: float,
    ground_truth: Path | None,
) -> None:
    """Produce simulated customers' events (with known ground truth) to Kafka."""
    from churnwatch.producers.simulator import parse_start, write_ground_truth
    from churnwatch.producers.simulator import simulate as run_simulation

    settings = settings_of(ctx)
    sim = settings.simulator
    try:
        events, truth = run_simulation(
            customers or sim.customers,
            sim.seed if seed is None else seed,
            parse_start(start or sim.start),
            days or sim.days,
            sim.owners,
            sim.malformed,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    truth_path = ground_truth or Path(sim.ground_truth_path)
    write_ground_truth(truth, truth_path)
    churners = sum(t.churned for t in truth)
    click.echo(
        f"{len(truth)} customers ({churners} will churn), {len(events)} events; "
        f"ground truth in {truth_path}"
    )
    ensure_topics_or_fail(settings)
    stats = produce_with_progress(settings, events, days_per_second, "producing")
    click.echo(
        f"sent {stats.sent}, delivered {stats.delivered}, failed {stats.failed} "
        f"({stats.malformed} deliberately malformed)"
    )
    if stats.failed:
        sys.exit(1)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mapping",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file mapping the export's columns to events (see configs/mappings/).",
)
@click.option(
    "--speedup",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Stream at this many times real speed; 0 = as fast as possible.",
)
@click.pass_context
def replay(ctx: click.Context, path: Path, mapping: Path, speedup: float) -> None:
    """Replay a real export (CSV or Parquet) to Kafka in event-time order."""
    from churnwatch.producers.loading import load_export
    from churnwatch.producers.mapping import MappingError
    from churnwatch.producers.replay import as_messages, send_rejected

    settings = settings_of(ctx)
    try:
        loaded = load_export(path, mapping)
    except MappingError as exc:
        raise click.UsageError(str(exc)) from exc
    events, rejected = loaded.events, loaded.rejected
    click.echo(f"{path}: {loaded.summary()}")
    ensure_topics_or_fail(settings)
    send_rejected(settings, path.name, rejected)
    # X times real speed = X / 86,400 simulated days per second
    stats = produce_with_progress(settings, as_messages(events), speedup / 86_400, "replaying")
    click.echo(f"sent {stats.sent}, delivered {stats.delivered}, failed {stats.failed}")
    if stats.failed:
        sys.exit(1)


@cli.command()
@click.pass_context
def archive(ctx: click.Context) -> None:
    """Archive every customer event to Parquet by event date (Ctrl-C flushes and stops)."""
    from churnwatch.consumers.archiver import ArchiveStats, run_archiver

    settings = settings_of(ctx)
    ensure_topics_or_fail(settings)
    serve_metrics(settings.archive.metrics_port, settings.worker.metrics_host, "ARCHIVE")
    stop = stop_on_signal()

    def report(stats: ArchiveStats) -> None:
        click.echo(
            f"archived {stats.archived} events in {stats.files} files ({stats.bytes:,} bytes); "
            f"{stats.duplicates} duplicates skipped, {stats.invalid} invalid"
        )

    click.echo(f"archiving to {settings.archive.path} (Ctrl-C stops)")
    report(run_archiver(settings, stop, report))


@cli.group()
def warnings() -> None:
    """Look at warnings."""


@warnings.command("tail")
@click.option("--from-beginning", is_flag=True, help="Show every warning so far, then follow.")
@click.pass_context
def warnings_tail(ctx: click.Context, from_beginning: bool) -> None:
    """Print warnings readably as they arrive (Ctrl-C stops)."""
    from churnwatch.consumers.warnings_view import format_warning, tail_warnings

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        tail_warnings(
            settings_of(ctx), stop, lambda w: click.echo(format_warning(w)), from_beginning
        )
    except KeyboardInterrupt:
        pass
