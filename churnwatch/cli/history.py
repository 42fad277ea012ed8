"""Commands over a history: backtest, train, the model registry, the consistency check."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from churnwatch.core.settings import Settings

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    from tqdm import tqdm

    from churnwatch.pipeline.events import CustomerEvent
    from churnwatch.producers.loading import Loaded


from churnwatch.cli.base import cli, serve_metrics, settings_of, stop_on_signal


def _over_history(command: Callable[..., None]) -> Callable[..., None]:
    """The options of a command that runs the warnings over an export: the export,
    its mapping, the churn horizon and the walk-forward model's retraining."""
    for option in reversed(
        [
            click.option(
                "--events",
                "events_path",
                required=True,
                multiple=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="The export to run on (CSV or Parquet); repeat it for several tables.",
            ),
            click.option(
                "--mapping",
                required=True,
                multiple=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="YAML mapping, as for replay: one per --events, in the same order "
                "(or one for all).",
            ),
            click.option(
                "--horizon-days",
                type=click.FloatRange(min=1),
                default=90.0,
                show_default=True,
                help="Churn = no order for this many days.",
            ),
            click.option(
                "--retrain-every-days",
                type=click.IntRange(min=1),
                default=28,
                show_default=True,
                help="Walk-forward: how often the churn model is retrained on the history so far.",
            ),
            click.option(
                "--no-model", is_flag=True, help="Rules only: no walk-forward churn model."
            ),
        ]
    ):
        command = option(command)
    return command


def _history_bar(items: list[CustomerEvent]) -> tqdm[CustomerEvent]:
    """A progress bar over a history (the time left is estimated from the events so
    far, retrainings included)."""
    from tqdm import tqdm

    return tqdm(items, desc="history", unit="event", unit_scale=True, leave=False)


def _note(message: str) -> None:
    """A progress line that does not break the bar."""
    from tqdm import tqdm

    tqdm.write(f"  {message}", file=sys.stderr)


@cli.command()
@_over_history
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output dir."
)
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
    from churnwatch.models.backtest import backtest as run_backtest
    from churnwatch.models.backtest import format_table

    settings = settings_of(ctx)
    events = _load_export(events_path, mapping)
    click.echo(f"backtesting {len(events)} events ...")
    try:
        summary = run_backtest(
            events,
            settings.warnings,
            settings.clock.sweep_every_hours * 3600,
            horizon_days,
            out,
            model_settings=None if no_model else settings.model,
            retrain_every_days=retrain_every_days,
            progress=_note,
            bar=_history_bar,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(summary))
    click.echo(f"wrote {out / 'warnings.csv'} and {out / 'summary.json'}")


@cli.command()
@_over_history
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The settings file to write: the current settings with the chosen thresholds.",
)
@click.option(
    "--split-at",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Choose on episodes opened before this day, check on those from it on "
    "(default: the middle of the period whose episodes can be judged).",
)
@click.option(
    "--over-like",
    type=click.FloatRange(min=-1, max=1),
    default=0.05,
    show_default=True,
    help="Goal: early-warning precision at least this far above that of customers "
    "like the ones warned (not yet flagged, the same order rhythm).",
)
@click.option(
    "--min-episodes",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="A rung counts only with this many judged early episodes on the earlier part.",
)
@click.pass_context
def tune(
    ctx: click.Context,
    events_path: tuple[Path, ...],
    mapping: tuple[Path, ...],
    horizon_days: float,
    retrain_every_days: int,
    no_model: bool,
    out: Path,
    split_at: datetime | None,
    over_like: float,
    min_episodes: int,
) -> None:
    """Fit each warning's thresholds to this history: chosen on its earlier part,
    checked on its later part.

    Every warning type has a ladder of six threshold sets, strict to loose (the
    third is the default). For each type, the rung that warns the most lost
    revenue early, among those whose early precision on the earlier part is
    --over-like above that of customers like the ones warned, is written to
    --out with the figures of every rung on both parts; serve it with
    `churnwatch --config OUT worker`. The file also
    sets the pace a customer with few orders is judged by to the book's (and
    each segment's) usual gap before the split. See docs/features.md
    ("Fitting the thresholds to your history").
    """
    from churnwatch.core.settings import DEFAULT_CONFIG
    from churnwatch.models.tuning import TuneError, format_tuning, write_settings
    from churnwatch.models.tuning import tune as run_tune

    settings = settings_of(ctx)
    config = Path(ctx.find_root().params.get("config") or DEFAULT_CONFIG)
    events = _load_export(events_path, mapping)
    runs = "six runs" if no_model else "a walk-forward training run, then six runs"
    click.echo(f"tuning on {len(events)} events ({runs} over the history) ...")
    try:
        tuning = run_tune(
            events,
            settings.warnings,
            settings.clock.sweep_every_hours * 3600,
            horizon_days,
            None if no_model else settings.model,
            split_at=None if split_at is None else split_at.replace(tzinfo=UTC),
            over_like=over_like,
            min_episodes=min_episodes,
            retrain_every_days=retrain_every_days,
            progress=_note,
            bar=_history_bar,
        )
    except TuneError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_tuning(tuning))
    from churnwatch.pipeline.events import WARNING_TYPES

    click.echo(_team_verdicts(settings, WARNING_TYPES))
    write_settings(tuning, config, out, ", ".join(p.name for p in events_path))
    click.echo(f"wrote {out}: use it with churnwatch --config {out} ...")


def _team_verdicts(settings: Settings, types: Iterable[str]) -> str:
    """What the team judged of these warning types, from the ledger (docs/model.md)."""
    from sqlalchemy.exc import SQLAlchemyError

    from churnwatch.consumers.alerts.verdicts import format_verdicts, ledger_verdicts

    where = "alerts.ledger_url"
    try:
        return format_verdicts(ledger_verdicts(settings.alerts.ledger_url), types, where)
    except SQLAlchemyError as exc:
        return f"the team's verdicts: the ledger cannot be read ({where}): {exc.__class__.__name__}"


def _false_alarms(settings: Settings) -> list[tuple[str, datetime]]:
    """The team's churn-risk false alarms (none without a readable ledger)."""
    from sqlalchemy.exc import SQLAlchemyError

    from churnwatch.consumers.alerts.verdicts import false_alarms

    try:
        return false_alarms(settings.alerts.ledger_url)
    except SQLAlchemyError:
        return []  # (said by _team_verdicts)


def _load_export(paths: tuple[Path, ...], mappings: tuple[Path, ...]) -> list[CustomerEvent]:
    """Events from exports and their mappings (one each, or one for all), merged in
    event-time order; what each gave is reported, bad mappings exit 2."""
    from churnwatch.producers.loading import load_exports
    from churnwatch.producers.mapping import MappingError

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
    from churnwatch.consumers.archiver import read_archive

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

    from churnwatch.models.report import format_comparison
    from churnwatch.models.train import TrainingError, beats_baselines
    from churnwatch.models.train import train as run_training

    settings = settings_of(ctx)
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

    alarms = _false_alarms(settings)
    try:
        result = run_training(
            events, settings, registry, source, step, event_bar, false_alarms=alarms
        )
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        steps.close()
    click.echo(format_comparison(result.card))
    click.echo(_team_verdicts(settings, ["churn_risk"]))
    taught = result.card["team_false_alarms"]
    if taught["weight"]:
        click.echo(
            f"the team's false alarms as negative examples (weight {taught['weight']:g}): "
            f"{taught['given']} false alarms, {taught['rows_taught']} training rows "
            f"({taught['relabelled']} the history called churned)"
        )
    elif alarms:
        click.echo(
            f"{len(alarms)} churn-risk false alarms in the ledger are not trained on: "
            "set model.false_alarm_weight (docs/model.md) to teach them"
        )
    margin = beats_baselines(result.card)
    click.echo(
        f"model ROC-AUC minus the best baseline's: {margin:+.3f}; "
        f"wrote {result.folder} in {time.monotonic() - started:.0f} s"
    )
    if promote:
        from churnwatch.core.registry import RegistryError
        from churnwatch.core.registry import promote as promote_version
        from churnwatch.pipeline.scoring import ModelError, load_model

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
    from churnwatch.core.registry import RegistryError, promoted_version, read_card, versions

    folder = _registry(settings_of(ctx), registry)
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
    from churnwatch.core.registry import RegistryError, promoted_version, read_card
    from churnwatch.models.report import format_comparison

    folder = _registry(settings_of(ctx), registry)
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
    from churnwatch.core.registry import RegistryError, promote
    from churnwatch.pipeline.scoring import ModelError, load_model

    folder = _registry(settings_of(ctx), registry)
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
    from churnwatch.core.registry import RegistryError, rollback

    folder = _registry(settings_of(ctx), registry)
    try:
        version = rollback(folder)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back to {version}")


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
    from churnwatch.consumers.consistency import check_consistency

    settings = settings_of(ctx)
    stop = stop_on_signal()
    if every is not None:
        serve_metrics(settings.archive.metrics_port, settings.worker.metrics_host, "CHECK")
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
