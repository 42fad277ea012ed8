"""``churnwatch alerts``: the dispatcher and the ledger's notifications, snoozes, feedback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from churnwatch.consumers.alerts.ledger import NOTIFICATION_KINDS, VERDICTS
from churnwatch.core.settings import Settings

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    pass


from churnwatch.cli.base import (
    cli,
    ensure_topics_or_fail,
    serve_metrics,
    settings_of,
    stop_on_signal,
)


@cli.group()
def alerts() -> None:
    """Notifications: run the dispatcher, list, snooze, give feedback."""


def _dispatcher_parts(ctx: click.Context) -> tuple[Settings, Any]:
    from churnwatch.consumers.alerts.ledger import open_ledger

    settings = settings_of(ctx)
    return settings, open_ledger(settings.alerts.ledger_url)


@alerts.command("run")
@click.pass_context
def alerts_run(ctx: click.Context) -> None:
    """Consume warnings, route and deliver notifications until Ctrl-C."""
    from churnwatch.consumers.alerts.dispatcher import make_dispatcher, run_dispatcher
    from churnwatch.consumers.alerts.routing import RoutingError

    settings = settings_of(ctx)
    try:
        dispatcher = make_dispatcher(settings)
    except RoutingError as exc:
        raise click.UsageError(str(exc)) from exc
    ensure_topics_or_fail(settings)
    serve_metrics(settings.alerts.metrics_port, settings.worker.metrics_host, "ALERTS")
    stop = stop_on_signal()
    click.echo(
        f"dispatching warnings from {settings.kafka.bootstrap_servers} "
        f"(routing {settings.alerts.routing}); Ctrl-C stops"
    )
    run_dispatcher(settings, stop, dispatcher)
    click.echo("dispatcher stopped")


@alerts.command("migrate")
@click.pass_context
def alerts_migrate(ctx: click.Context) -> None:
    """Bring the ledger's schema up to this release's and say from which revision.

    Every command that opens the ledger does this first, one process at a time;
    run it on its own to upgrade a shared ledger (PostgreSQL) before the new
    release's dispatchers and web processes start."""
    from churnwatch.consumers.alerts.ledger import ledger_engine, migrate, schema_revision

    engine = ledger_engine(settings_of(ctx).alerts.ledger_url)
    before = schema_revision(engine)
    migrate(engine)
    after = schema_revision(engine)
    if before == after:
        click.echo(f"the ledger's schema is at revision {after}: nothing to do")
    else:
        click.echo(f"the ledger's schema went from revision {before or 'none'} to {after}")


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
    from churnwatch.consumers.alerts.ledger import find_notifications

    _, sessions = _dispatcher_parts(ctx)
    with sessions() as session:
        rows = find_notifications(session, customer, recipient, status, kind, limit)
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

    from churnwatch.consumers.alerts.ledger import LedgerError, add_snooze

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

    from churnwatch.consumers.alerts.ledger import lift_snoozes

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

    from churnwatch.consumers.alerts.ledger import add_feedback, notification_by_short_id
    from churnwatch.consumers.alerts.tasks import close_tasks

    _, sessions = _dispatcher_parts(ctx)
    with sessions.begin() as session:
        found = notification_by_short_id(session, short_id)
        if found is None:
            raise click.ClickException(
                f"no notification {short_id!r} (see `churnwatch alerts list`)"
            )
        now = datetime.now(UTC)
        add_feedback(session, short_id, found.warning_id, verdict, note, now)
        if found.warning_id is not None:  # its open task is done, with this outcome
            close_tasks(session, [found.warning_id], "done", verdict, "churnwatch alerts", now)
    click.echo(f"recorded {verdict} for {short_id}")
