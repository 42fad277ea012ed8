"""``churnwatch demo``, ``churnwatch bench`` and ``churnwatch docs``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    pass


from churnwatch.cli.base import cli, settings_of


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
@click.option(
    "--broker",
    "broker_kind",
    type=click.Choice(["tansu", "apache-kafka"]),
    default="tansu",
    show_default=True,
    help="tansu: the embedded broker (memory only, nothing to install); apache-kafka: "
    "a one-node Apache Kafka of the pinned version (needs Java; jars fetched with Maven "
    "on first use).",
)
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
    broker_kind: str,
) -> None:
    """Run everything on this machine: broker, worker, simulator, the warnings view and
    the sales team's web inbox."""
    from churnwatch.core.broker import BrokerError
    from churnwatch.demo.run import run_demo

    try:
        result = run_demo(
            settings_of(ctx),
            duration=duration,
            summary_path=summary,
            customers=customers,
            days_per_second=days_per_second,
            show_warnings=not quiet,
            with_model=not no_model,
            web=not no_web,
            keep_serving=not no_web and duration is None and summary is None,
            broker=broker_kind,
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
    "--broker",
    "broker_kind",
    type=click.Choice(["tansu", "apache-kafka"]),
    default="tansu",
    show_default=True,
    help="The broker it starts: the embedded Tansu, or a one-node Apache Kafka of the "
    "pinned version (needs Java).",
)
@click.option(
    "--guarantee",
    type=click.Choice(["at_least_once", "exactly_once"]),
    default="at_least_once",
    show_default=True,
    help="The workers' worker.processing_guarantee (exactly_once needs --broker apache-kafka).",
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
    broker_kind: str,
    guarantee: str,
    json_path: Path | None,
    backtest: bool,
    web: bool,
) -> None:
    """Measure the worker against a bare consume loop on its own broker."""
    import json

    from churnwatch.bench.batch import run_backtest_bench, run_web_bench
    from churnwatch.bench.drain import format_result, run_bench, to_json
    from churnwatch.core.broker import BrokerError

    if guarantee == "exactly_once" and broker_kind != "apache-kafka":
        raise click.UsageError("--guarantee exactly_once needs --broker apache-kafka")
    if web:
        figures = run_web_bench(
            settings_of(ctx), customers, days, say=lambda line: click.echo(line, err=True)
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
            settings_of(ctx),
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
            settings_of(ctx),
            customers,
            days,
            workers=workers,
            with_model=not no_model,
            store=store,
            live_days=live_days,
            live_rate=live_rate,
            faust_floor=not no_faust_floor,
            broker_kind=broker_kind,
            guarantee=guarantee,
            say=lambda line: click.echo(line, err=True),
        )
    except (BrokerError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_result(result))
    if json_path is not None:
        json_path.write_text(to_json(result) + "\n")
        click.echo(f"figures written to {json_path}")


@cli.group()
def docs() -> None:
    """Generate documentation from the code."""


@docs.command("events")
@click.option("--check", is_flag=True, help="Fail if the file is out of date.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="docs/events.md",
    show_default=True,
    help="The file to write (run from the checkout's top folder).",
)
def docs_events(check: bool, out: Path) -> None:
    """Write docs/events.md from the record declarations."""
    from churnwatch.docs import render_events_md

    text = render_events_md()
    if check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            raise click.ClickException(f"{out} is out of date: run churnwatch docs events")
        click.echo(f"{out} is up to date")
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}")
