"""Alembic's environment for the alert ledger (run by ``ledger.migrate``, or by
``alembic`` with ``-x url=...`` from this folder's ``alembic.ini``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from churnwatch.consumers.alerts.ledger import Base, migrate


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line
        url = context.get_x_argument(as_dictionary=True).get("url")
        if not url:
            raise SystemExit(
                "give the ledger's URL: alembic -x url=postgresql+psycopg://... upgrade head"
            )
        migrate(create_engine(url))  # (which runs this file again, with its connection)
        return
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters a table by copying it
    )
    with context.begin_transaction():
        context.run_migrations()


run()
