"""``churnwatch web``: the inbox, and who may sign in."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from churnwatch.consumers.alerts.ledger import ROLES

if TYPE_CHECKING:  # the commands import their modules lazily, so --help stays fast
    pass


from churnwatch.cli.base import cli, settings_of


@cli.group(invoke_without_command=True)
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: web.port).")
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """The sales team's web inbox (serves until Ctrl-C); `web users` manages who may sign in."""
    if ctx.invoked_subcommand is not None:
        return
    from churnwatch.consumers.web.app import WebServer

    settings = settings_of(ctx)
    server = WebServer(settings, host, port)
    click.echo(f"churnwatch web inbox on {server.url} (Ctrl-C stops)", err=True)
    server.run()


def _ledger(ctx: click.Context) -> Any:
    from churnwatch.consumers.alerts.ledger import open_ledger

    return open_ledger(settings_of(ctx).alerts.ledger_url)


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
    from churnwatch.consumers.web.users import UserError, add_user

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
    from churnwatch.consumers.web.users import list_users

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
    from churnwatch.consumers.web.users import UserError, remove_user

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
    from churnwatch.consumers.web.users import UserError, set_password

    sessions = _ledger(ctx)
    password = _new_password(_stdin_password(password_stdin))
    with sessions.begin() as session:
        try:
            set_password(session, username, password)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"password of {username} changed")
