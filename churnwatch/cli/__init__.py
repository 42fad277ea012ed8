"""The ``churnwatch`` command line: the group in :mod:`churnwatch.cli.base`, one
module per group of commands (each registers its commands on the group)."""

from __future__ import annotations

from churnwatch.cli import alerts, history, stream, tools, web
from churnwatch.cli.base import cli

__all__ = ["alerts", "cli", "history", "main", "stream", "tools", "web"]


def main() -> None:
    cli(prog_name="churnwatch")
