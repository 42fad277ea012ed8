"""The ``churnwatch`` command line.

Exit codes: 0 ok, 1 runtime failure (broker unreachable, ...), 2 bad usage or
bad settings (the message names the key).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from churnwatch.settings import ConfigError, Settings, load_settings
from consumers.alerts.ledger import NOTIFICATION_KINDS, ROLES, VERDICTS

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    from pipeline.events import CustomerEvent
    from producers.mapping import Loaded
    from producers.produce import ProduceStats
    from producers.simulator import SimEvent


def _settings(ctx: click.Context) -> Settings:
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


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM; install it before announcing readiness."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _serve_metrics(port: int, host: str, owner: str) -> None:
    """Prometheus /metrics on ``port`` (0: none): the metrics this kind of process
    owns (``owner``: a registry of :mod:`pipeline.metrics`)."""
    if port:
        from prometheus_client import start_http_server

        from pipeline import metrics

        start_http_server(port, addr=host, registry=getattr(metrics, owner))


def _ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics (a clear error if the broker is unreachable)."""
    from churnwatch.topics import TopicsError, ensure_topics

    try:
        return ensure_topics(settings)
    except TopicsError as exc:
        raise click.ClickException(str(exc)) from exc


def _produce_with_progress(
    settings: Settings, messages: list[SimEvent], days_per_second: float, label: str
) -> ProduceStats:
    """Produce ``messages`` on the accelerated clock with a progress bar; SIGTERM stops."""
    from producers.produce import produce
    from producers.simulator import iter_paced

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


@cli.command()
@click.pass_context
def broker(ctx: click.Context) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) until Ctrl-C."""
    from churnwatch.broker import BrokerError, EmbeddedBroker

    b = _settings(ctx).broker
    stop = _stop_on_signal()  # before "ready": a client may stop us right after it
    try:
        with EmbeddedBroker(b.host, b.port, b.startup_timeout_seconds) as running:
            click.echo(f"broker ready on {running.bootstrap_servers} (memory only; Ctrl-C stops)")
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
    created = _ensure_topics(_settings(ctx))
    click.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none needed'}")


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the Faust worker (state, rules, warnings) until Ctrl-C."""
    from faust import Worker
    from threadpoolctl import threadpool_limits

    from pipeline.app import create_app, fewer_gc_passes, use_event_loop

    # The model scores a partition's customers per sweep: small batches, for
    # which one thread is faster than a pool that competes with Kafka I/O.
    threadpool_limits(1)
    settings = _settings(ctx)
    use_event_loop(settings.worker.event_loop)
    _ensure_topics(settings)
    _serve_metrics(settings.worker.metrics_port, settings.worker.metrics_host, "WORKER")
    pipeline = create_app(settings)
    click.echo(
        f"worker {settings.worker.app_id}: {settings.kafka.bootstrap_servers}, "
        f"clock={settings.clock.mode}, store={settings.worker.store}"
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
    from producers.simulator import parse_start, write_ground_truth
    from producers.simulator import simulate as run_simulation

    settings = _settings(ctx)
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
    _ensure_topics(settings)
    stats = _produce_with_progress(settings, events, days_per_second, "producing")
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
    from producers.mapping import MappingError, load_export
    from producers.replay import as_messages, send_rejected

    settings = _settings(ctx)
    try:
        loaded = load_export(path, mapping)
    except MappingError as exc:
        raise click.UsageError(str(exc)) from exc
    events, rejected = loaded.events, loaded.rejected
    click.echo(f"{path}: {loaded.summary()}")
    _ensure_topics(settings)
    send_rejected(settings, path.name, rejected)
    # X times real speed = X / 86,400 simulated days per second
    stats = _produce_with_progress(settings, as_messages(events), speedup / 86_400, "replaying")
    click.echo(f"sent {stats.sent}, delivered {stats.delivered}, failed {stats.failed}")
    if stats.failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--events",
    "events_path",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The export to backtest on (CSV or Parquet); repeat it for several tables.",
)
@click.option(
    "--mapping",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML mapping, as for replay: one per --events, in the same order (or one for all).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output dir."
)
@click.option(
    "--horizon-days",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    help="Churn = no order for this many days.",
)
@click.option(
    "--retrain-every-days",
    type=click.IntRange(min=1),
    default=28,
    show_default=True,
    help="Walk-forward: how often the churn model is retrained on the history so far.",
)
@click.option("--no-model", is_flag=True, help="Rules only: no walk-forward churn model.")
@click.pass_context
def backtest(
    ctx: click.Context,
    events_path: tuple[Path, ...],
    mapping: tuple[Path, ...],
    out: Path,
    horizon_days: float,
    retrain_every_days: int,
    no_model: bool,
) -> None:
    """Run the warning rules (and a walk-forward churn model) over a history in batch.

    Every warning episode is scored against what the customer did next; see
    docs/features.md ("Backtest") for the definitions.
    """
    from tqdm import tqdm

    from models.backtest import backtest as run_backtest
    from models.backtest import format_table

    settings = _settings(ctx)
    events = _load_export(events_path, mapping)
    click.echo(f"backtesting {len(events)} events ...")

    def bar(items: list[CustomerEvent]) -> tqdm[CustomerEvent]:
        # the time left is estimated from the events so far (retrainings included)
        return tqdm(items, desc="history", unit="event", unit_scale=True, leave=False)

    try:
        summary = run_backtest(
            events,
            settings.warnings,
            settings.clock.sweep_every_hours * 3600,
            horizon_days,
            out,
            model_settings=None if no_model else settings.model,
            retrain_every_days=retrain_every_days,
            progress=lambda message: tqdm.write(f"  {message}", file=sys.stderr),
            bar=bar,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(summary))
    click.echo(f"wrote {out / 'warnings.csv'} and {out / 'summary.json'}")


def _load_export(paths: tuple[Path, ...], mappings: tuple[Path, ...]) -> list[CustomerEvent]:
    """Events from exports and their mappings (one each, or one for all), merged in
    event-time order; what each gave is reported, bad mappings exit 2."""
    from producers.mapping import MappingError, load_exports

    if len(mappings) not in (1, len(paths)):
        raise click.UsageError(
            f"{len(paths)} --events and {len(mappings)} --mapping: give one mapping per "
            "export (in the same order), or one for all"
        )
    pairs = list(zip(paths, mappings * len(paths) if len(mappings) == 1 else mappings, strict=True))
    try:
        loaded = load_exports(pairs)
    except MappingError as exc:
        raise click.UsageError(str(exc)) from exc
    for (path, _), part in zip(pairs, loaded, strict=True):
        click.echo(f"{path.name}: {part.summary()}", err=True)
    events = _merged(loaded)
    if len(loaded) > 1:
        click.echo(f"together: {len(events):,} events", err=True)
    return events


def _merged(parts: list[Loaded]) -> list[CustomerEvent]:
    """The events of several loaded exports in one event-time order."""
    return sorted((e for part in parts for e in part.events), key=lambda e: e.occurred_at)


def _load_history(
    settings: Settings, events_path: tuple[Path, ...], mapping: tuple[Path, ...]
) -> tuple[list[CustomerEvent], str]:
    """Events from exports plus mappings, or from the archive; and where from."""
    if bool(events_path) != bool(mapping):
        raise click.UsageError("--events and --mapping go together")
    if events_path:
        events = _load_export(events_path, mapping)
        names = ", ".join(p.name for p in events_path)
        return events, f"{names} (mapping {', '.join(m.name for m in mapping)})"
    from consumers.archiver import read_archive

    events = read_archive(settings.archive.path)
    if not events:
        raise click.ClickException(
            f"the archive {settings.archive.path} is empty: run `churnwatch archive` while "
            "events flow, or train from a file with --events PATH --mapping MAPPING"
        )
    return events, f"archive {settings.archive.path}"


def _registry(settings: Settings, registry: Path | None) -> Path:
    return registry if registry is not None else Path(settings.model.registry)


_registry_option = click.option(
    "--registry",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model registry folder (default: model.registry in the settings).",
)


@cli.command()
@click.option(
    "--events",
    "events_path",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Train from this export (CSV or Parquet) instead of the archive; repeatable.",
)
@click.option(
    "--mapping",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML mapping for --events, as for replay: one per export, or one for all.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Registry to add the new version to (default: model.registry in the settings).",
)
@click.option("--promote", is_flag=True, help="Promote the new version (workers pick it up).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def train(
    ctx: click.Context,
    events_path: tuple[Path, ...],
    mapping: tuple[Path, ...],
    out: Path | None,
    promote: bool,
    quiet: bool,
) -> None:
    """Train the churn model on history, compare it with the baselines, add it to the registry.

    Splits by time (test: the latest cutoff with a full horizon; training: the
    earlier cutoffs whose horizon ended by then) and writes card.json, the model
    and a report to a new version folder. Nothing serves it until it is promoted.
    """
    import time

    from tqdm import tqdm

    from models.train import TrainingError, beats_baselines, format_comparison
    from models.train import train as run_training

    settings = _settings(ctx)
    registry = _registry(settings, out)
    started = time.monotonic()
    events, source = _load_history(settings, events_path, mapping)
    click.echo(f"training on {len(events):,} events from {source}")
    steps = tqdm(total=4, desc="training", unit="step", disable=quiet, leave=False)
    started_steps: list[str] = []

    def step(name: str) -> None:
        if started_steps:  # the previous step is done
            steps.update(1)
        started_steps.append(name)
        steps.set_description(name)

    def event_bar(items: list[CustomerEvent]) -> tqdm[CustomerEvent]:
        return tqdm(items, desc="features", unit="event", disable=quiet, leave=False)

    try:
        result = run_training(events, settings, registry, source, step, event_bar)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        steps.close()
    click.echo(format_comparison(result.card))
    margin = beats_baselines(result.card)
    click.echo(
        f"model ROC-AUC minus the best baseline's: {margin:+.3f}; "
        f"wrote {result.folder} in {time.monotonic() - started:.0f} s"
    )
    if promote:
        from models.registry import RegistryError
        from models.registry import promote as promote_version
        from pipeline.scoring import ModelError, load_model

        try:
            promote_version(registry, result.version, check=load_model)
        except (RegistryError, ModelError) as exc:
            raise click.ClickException(f"not promoted: {exc}") from exc
        click.echo(f"promoted {result.version}")
    else:
        click.echo(f"serve it with: churnwatch models promote {result.version}")


@cli.group()
def models() -> None:
    """The model registry: list, show, promote, roll back."""


@models.command("list")
@_registry_option
@click.pass_context
def models_list(ctx: click.Context, registry: Path | None) -> None:
    """Every trained version with its test ROC-AUC; * marks the one serving."""
    from models.registry import RegistryError, promoted_version, read_card, versions

    folder = _registry(_settings(ctx), registry)
    try:
        serving = promoted_version(folder)
        found = versions(folder)
        if not found:
            click.echo(f"no models in {folder} yet: run `churnwatch train`")
            return
        click.echo(f"{'':2}{'version':20} {'created':20} {'ROC-AUC':>8} {'best baseline':>14}")
        for version in found:
            card = read_card(folder, version)
            best = max(m["roc_auc"] for m in card["metrics"]["baselines"].values())
            mark = "*" if version == serving else " "
            click.echo(
                f"{mark} {version:20} {card['created_at'][:19]:20} "
                f"{card['metrics']['model']['roc_auc']:>8.3f} {best:>14.3f}"
            )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


@models.command("show")
@click.argument("version", required=False)
@_registry_option
@click.pass_context
def models_show(ctx: click.Context, version: str | None, registry: Path | None) -> None:
    """The card of VERSION (default: the promoted one)."""
    from models.registry import RegistryError, promoted_version, read_card
    from models.train import format_comparison

    folder = _registry(_settings(ctx), registry)
    try:
        version = version or promoted_version(folder)
        if version is None:
            raise click.ClickException(f"no model promoted in {folder}: name a version")
        card = read_card(folder, version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    window = card["data_window"]
    click.echo(f"version {card['version']} (created {card['created_at']})")
    click.echo(f"source  {card['source']}")
    click.echo(f"label   {card['label']['definition']}")
    click.echo(
        f"train   {window['train_rows']:,} rows, cutoffs {window['train_cutoffs'][0][:10]} "
        f"to {window['train_cutoffs'][1][:10]}"
    )
    click.echo(f"test    {window['test_rows']:,} rows at {window['test_cutoff'][:10]}")
    click.echo(format_comparison(card))
    click.echo(f"report  {folder / version / card['report']['file']}")


@models.command("promote")
@click.argument("version")
@_registry_option
@click.pass_context
def models_promote(ctx: click.Context, version: str, registry: Path | None) -> None:
    """Serve VERSION: running workers load it within model.reload_seconds."""
    from models.registry import RegistryError, promote
    from pipeline.scoring import ModelError, load_model

    folder = _registry(_settings(ctx), registry)
    try:
        previous = promote(folder, version, check=load_model)
    except (RegistryError, ModelError) as exc:
        raise click.ClickException(f"not promoted: {exc}") from exc
    click.echo(f"promoted {version} (was {previous or 'none'})")


@models.command("rollback")
@_registry_option
@click.pass_context
def models_rollback(ctx: click.Context, registry: Path | None) -> None:
    """Serve the previously promoted version again."""
    from models.registry import RegistryError, rollback

    folder = _registry(_settings(ctx), registry)
    try:
        version = rollback(folder)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back to {version}")


@cli.command()
@click.pass_context
def archive(ctx: click.Context) -> None:
    """Archive every customer event to Parquet by event date (Ctrl-C flushes and stops)."""
    from consumers.archiver import ArchiveStats, run_archiver

    settings = _settings(ctx)
    _ensure_topics(settings)
    _serve_metrics(settings.archive.metrics_port, settings.worker.metrics_host, "ARCHIVE")
    stop = _stop_on_signal()

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
    from consumers.warnings_view import format_warning, tail_warnings

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        tail_warnings(_settings(ctx), stop, lambda w: click.echo(format_warning(w)), from_beginning)
    except KeyboardInterrupt:
        pass


@cli.group()
def alerts() -> None:
    """Notifications: run the dispatcher, list, snooze, give feedback."""


def _dispatcher_parts(ctx: click.Context) -> tuple[Settings, Any]:
    from consumers.alerts.ledger import open_ledger

    settings = _settings(ctx)
    return settings, open_ledger(settings.alerts.ledger_url)


@alerts.command("run")
@click.pass_context
def alerts_run(ctx: click.Context) -> None:
    """Consume warnings, route and deliver notifications until Ctrl-C."""
    from consumers.alerts.dispatcher import make_dispatcher, run_dispatcher
    from consumers.alerts.routing import RoutingError

    settings = _settings(ctx)
    try:
        dispatcher = make_dispatcher(settings)
    except RoutingError as exc:
        raise click.UsageError(str(exc)) from exc
    _ensure_topics(settings)
    _serve_metrics(settings.alerts.metrics_port, settings.worker.metrics_host, "ALERTS")
    stop = _stop_on_signal()
    click.echo(
        f"dispatching warnings from {settings.kafka.bootstrap_servers} "
        f"(routing {settings.alerts.routing}); Ctrl-C stops"
    )
    run_dispatcher(settings, stop, dispatcher)
    click.echo("dispatcher stopped")


@alerts.command("list")
@click.option("--customer", help="Only this customer.")
@click.option("--recipient", help="Only notifications to this recipient.")
@click.option(
    "--status",
    type=click.Choice(["pending", "sent", "snoozed", "inhibited", "capped", "superseded"]),
    help="Only notifications in this state.",
)
@click.option(
    "--kind",
    type=click.Choice(NOTIFICATION_KINDS),
    help="Only notifications of this kind.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_context
def alerts_list(
    ctx: click.Context,
    customer: str | None,
    recipient: str | None,
    status: str | None,
    kind: str | None,
    limit: int,
) -> None:
    """Notifications in the ledger, newest first."""
    from sqlalchemy import select

    from consumers.alerts.ledger import Notification

    _, sessions = _dispatcher_parts(ctx)
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    for column, value in (
        (Notification.customer_id, customer),
        (Notification.recipient, recipient),
        (Notification.status, status),
        (Notification.kind, kind),
    ):
        if value is not None:
            query = query.where(column == value)
    with sessions() as session:
        rows = list(session.scalars(query))
    if not rows:
        click.echo("no notifications match")
    for n in rows:
        sent = n.sent_at.isoformat(timespec="seconds") if n.sent_at else "-"
        click.echo(
            f"{n.short_id}  {n.status:9} {n.kind:8} {n.recipient:28} {n.channel:30} "
            f"sent {sent}  {n.subject}"
        )


@alerts.command("snooze")
@click.argument("customer")
@click.option("--type", "warning_type", help="Only this warning type (default: all).")
@click.option(
    "--until",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    help="UTC date (or date and time) the snooze ends.",
)
@click.option("--reason", required=True, help="Why (kept in the ledger).")
@click.pass_context
def alerts_snooze(
    ctx: click.Context, customer: str, warning_type: str | None, until: Any, reason: str
) -> None:
    """Record but do not send CUSTOMER's notifications until a date."""
    from datetime import UTC, datetime

    from consumers.alerts.ledger import LedgerError, add_snooze

    _, sessions = _dispatcher_parts(ctx)
    end = until.replace(tzinfo=UTC)
    with sessions.begin() as session:
        try:
            add_snooze(session, customer, warning_type, end, reason, datetime.now(UTC))
        except LedgerError as exc:
            raise click.UsageError(f"--until: {exc}") from None
    click.echo(f"snoozed {customer} ({warning_type or 'all warnings'}) until {end.isoformat()}")


@alerts.command("unsnooze")
@click.argument("customer")
@click.pass_context
def alerts_unsnooze(ctx: click.Context, customer: str) -> None:
    """Lift CUSTOMER's snoozes (new notifications are sent again)."""
    from datetime import UTC, datetime

    from consumers.alerts.ledger import lift_snoozes

    _, sessions = _dispatcher_parts(ctx)
    with sessions.begin() as session:
        lifted = lift_snoozes(session, customer, datetime.now(UTC))
    click.echo(f"lifted {lifted} snooze(s) for {customer}")


@alerts.command("feedback")
@click.argument("short_id")
@click.argument("verdict", type=click.Choice(VERDICTS))
@click.option("--note", default="", help="Free text.")
@click.pass_context
def alerts_feedback(ctx: click.Context, short_id: str, verdict: str, note: str) -> None:
    """Record what came of notification SHORT_ID (the id in its subject)."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from consumers.alerts.ledger import Notification, add_feedback

    _, sessions = _dispatcher_parts(ctx)
    with sessions.begin() as session:
        found = session.scalar(select(Notification).where(Notification.short_id == short_id))
        if found is None:
            raise click.ClickException(
                f"no notification {short_id!r} (see `churnwatch alerts list`)"
            )
        add_feedback(session, short_id, found.warning_id, verdict, note, datetime.now(UTC))
    click.echo(f"recorded {verdict} for {short_id}")


@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=10),
    help="Stop after this many seconds (default: when the simulated history is processed).",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSON summary here at the end.",
)
@click.option("--customers", type=click.IntRange(min=1), help="Simulated customers.")
@click.option(
    "--days-per-second",
    type=click.FloatRange(min=0),
    default=12.0,
    show_default=True,
    help="Accelerated clock for the simulated history.",
)
@click.option("--quiet", is_flag=True, help="Do not print each warning, only progress.")
@click.option("--no-model", is_flag=True, help="Skip training the demo's churn model: rules only.")
@click.option(
    "--no-web",
    is_flag=True,
    help="No web inbox (by default it starts, and keeps serving after the history "
    "until Ctrl-C unless --duration or --summary is given).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    duration: float | None,
    summary: Path | None,
    customers: int | None,
    days_per_second: float,
    quiet: bool,
    no_model: bool,
    no_web: bool,
) -> None:
    """Run everything on this machine: broker, worker, simulator, the warnings view and
    the sales team's web inbox."""
    from churnwatch.broker import BrokerError
    from churnwatch.demo import run_demo

    try:
        result = run_demo(
            _settings(ctx),
            duration=duration,
            summary_path=summary,
            customers=customers,
            days_per_second=days_per_second,
            show_warnings=not quiet,
            with_model=not no_model,
            web=not no_web,
            keep_serving=not no_web and duration is None and summary is None,
        )
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if result else 1)


@cli.command()
@click.option("--customers", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--days", type=click.IntRange(min=120), default=540, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Also measure this many workers sharing the partitions (after one alone).",
)
@click.option("--no-model", is_flag=True, help="Rules only (default: a trained model serves).")
@click.option(
    "--store",
    type=click.Choice(["rocksdb://", "memory://"]),
    default="rocksdb://",
    show_default=True,
    help="The workers' table store.",
)
@click.option(
    "--live-days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="The last days of the history are produced live, for the latency.",
)
@click.option(
    "--live-rate",
    type=click.FloatRange(min=1),
    default=1000.0,
    show_default=True,
    help="Events per second of the live part.",
)
@click.option(
    "--no-faust-floor",
    is_flag=True,
    help="Skip the do-nothing Faust agent (Faust's own cost per message).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures here as JSON.",
)
@click.option(
    "--backtest",
    is_flag=True,
    help="Time a backtest of the simulated history instead (batch, no broker).",
)
@click.option(
    "--web",
    is_flag=True,
    help="Time the web inbox's pages instead: one open warning of every type for each "
    "simulated customer (--customers 2000: 10,000 warnings), over HTTP.",
)
@click.pass_context
def bench(
    ctx: click.Context,
    customers: int,
    days: int,
    workers: int,
    no_model: bool,
    store: str,
    live_days: int,
    live_rate: float,
    no_faust_floor: bool,
    json_path: Path | None,
    backtest: bool,
    web: bool,
) -> None:
    """Measure the worker against a bare consume loop on its own embedded broker."""
    import json

    from churnwatch.bench import (
        format_result,
        run_backtest_bench,
        run_bench,
        run_web_bench,
        to_json,
    )
    from churnwatch.broker import BrokerError

    if web:
        figures = run_web_bench(
            _settings(ctx), customers, days, say=lambda line: click.echo(line, err=True)
        )
        click.echo(
            f"web inbox, {figures['open_warnings']:,} open warnings, on {figures['machine']}"
        )
        for page, ms in figures["median_ms"].items():
            click.echo(f"  {page:<55} {ms:>8.1f} ms (median of {figures['rounds']})")
        if json_path is not None:
            json_path.write_text(json.dumps(figures, indent=2) + "\n")
            click.echo(f"figures written to {json_path}")
        return

    if backtest:
        figures = run_backtest_bench(
            _settings(ctx),
            customers,
            days,
            with_model=not no_model,
            say=lambda line: click.echo(line, err=True),
        )
        click.echo(
            f"backtest of {figures['events']:,} events ({figures['model']}): "
            f"{figures['seconds']} s, {figures['events_per_second']:,} events/s "
            f"on {figures['machine']}"
        )
        if json_path is not None:
            json_path.write_text(json.dumps(figures, indent=2) + "\n")
            click.echo(f"figures written to {json_path}")
        return

    try:
        result = run_bench(
            _settings(ctx),
            customers,
            days,
            workers=workers,
            with_model=not no_model,
            store=store,
            live_days=live_days,
            live_rate=live_rate,
            faust_floor=not no_faust_floor,
            say=lambda line: click.echo(line, err=True),
        )
    except (BrokerError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_result(result))
    if json_path is not None:
        json_path.write_text(to_json(result) + "\n")
        click.echo(f"figures written to {json_path}")


@cli.group()
def check() -> None:
    """Checks on a running deployment."""


@check.command("consistency")
@click.option("--sample", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Which customers to sample.")
@click.option(
    "--every",
    type=click.FloatRange(min=10),
    help="Repeat every SECONDS (with /metrics on archive.metrics_port) until Ctrl-C.",
)
@click.pass_context
def check_consistency_command(
    ctx: click.Context, sample: int, seed: int, every: float | None
) -> None:
    """Recompute sampled customers' features from the archive; compare with the live table.

    Exit code 1 when a compared customer differs (the features are listed).
    """
    from consumers.consistency import check_consistency

    settings = _settings(ctx)
    stop = _stop_on_signal()
    if every is not None:
        _serve_metrics(settings.archive.metrics_port, settings.worker.metrics_host, "CHECK")
    while True:
        report = check_consistency(settings, sample, seed)
        click.echo(
            f"sampled {report.sampled}, compared {report.compared}, "
            f"lagging {report.lagging}, mismatched {len(report.mismatched)}"
        )
        for customer_id, features in sorted(report.mismatched.items()):
            click.echo(f"  {customer_id}: {', '.join(features)}")
        if every is None or stop.wait(every):
            break
    sys.exit(1 if report.mismatched else 0)


@cli.group()
def docs() -> None:
    """Generate documentation from the code."""


@docs.command("events")
@click.option("--check", is_flag=True, help="Fail if docs/events.md is out of date.")
def docs_events(check: bool) -> None:
    """Write docs/events.md from the record declarations."""
    from churnwatch.docs import EVENTS_MD, render_events_md

    text = render_events_md()
    if check:
        if not EVENTS_MD.exists() or EVENTS_MD.read_text(encoding="utf-8") != text:
            raise click.ClickException(f"{EVENTS_MD} is out of date: run churnwatch docs events")
        click.echo(f"{EVENTS_MD} is up to date")
        return
    EVENTS_MD.write_text(text, encoding="utf-8")
    click.echo(f"wrote {EVENTS_MD}")


@cli.group(invoke_without_command=True)
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: web.port).")
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """The sales team's web inbox (serves until Ctrl-C); `web users` manages who may sign in."""
    if ctx.invoked_subcommand is not None:
        return
    from consumers.web.app import WebServer

    settings = _settings(ctx)
    server = WebServer(settings, host, port)
    click.echo(f"churnwatch web inbox on {server.url} (Ctrl-C stops)", err=True)
    server.run()


def _ledger(ctx: click.Context) -> Any:
    from consumers.alerts.ledger import open_ledger

    return open_ledger(_settings(ctx).alerts.ledger_url)


def _new_password(password: str | None) -> str:
    """From --password-stdin's line, else asked twice (never on the command line)."""
    if password is not None:
        return password
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


@web.group("users")
def web_users() -> None:
    """Who may sign in to the web inbox (stored in the alert ledger, passwords hashed)."""


_PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


def _stdin_password(flag: bool) -> str | None:
    return sys.stdin.readline().rstrip("\n") if flag else None


@web_users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default="rep", show_default=True)
@click.option("--owner", default="", help="The owner value of their customers (reps).")
@click.option("--team", default="", help="Team: a manager sees their team's customers.")
@click.option("--language", type=click.Choice(["en", "zh-CN"]), default="en", show_default=True)
@_PASSWORD_STDIN
@click.pass_context
def web_users_add(
    ctx: click.Context,
    username: str,
    role: str,
    owner: str,
    team: str,
    language: str,
    password_stdin: bool,
) -> None:
    """Add a user who signs in as USERNAME."""
    from consumers.web.users import UserError, add_user

    sessions = _ledger(ctx)
    password = _new_password(_stdin_password(password_stdin))
    with sessions.begin() as session:
        try:
            add_user(session, username, password, role, owner, team, language)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"added {role} {username}" + (f" (owner {owner})" if owner else ""))


@web_users.command("list")
@click.pass_context
def web_users_list(ctx: click.Context) -> None:
    """Every user, with role, owner and team (never a password)."""
    from consumers.web.users import list_users

    with _ledger(ctx).begin() as session:
        users = list_users(session)
        click.echo(f"{'user':<20} {'role':<8} {'owner':<32} {'team':<12} language")
        for u in users:
            click.echo(f"{u.username:<20} {u.role:<8} {u.owner:<32} {u.team:<12} {u.language}")


@web_users.command("remove")
@click.argument("username")
@click.pass_context
def web_users_remove(ctx: click.Context, username: str) -> None:
    """Remove USERNAME (what they did stays in the ledger)."""
    from consumers.web.users import UserError, remove_user

    with _ledger(ctx).begin() as session:
        try:
            remove_user(session, username)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"removed {username}")


@web_users.command("passwd")
@click.argument("username")
@_PASSWORD_STDIN
@click.pass_context
def web_users_passwd(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Set USERNAME's password."""
    from consumers.web.users import UserError, set_password

    sessions = _ledger(ctx)
    password = _new_password(_stdin_password(password_stdin))
    with sessions.begin() as session:
        try:
            set_password(session, username, password)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"password of {username} changed")


def main() -> None:
    cli(prog_name="churnwatch")


if __name__ == "__main__":
    main()
