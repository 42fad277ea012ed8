"""The ledger's schema goes through Alembic migrations, on SQLite and on PostgreSQL:
a new ledger gets the models' schema, an older one (of any revision, or made
before there were migrations) is upgraded keeping its rows, and processes that
open a new ledger at once all get it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from churnwatch.consumers.alerts.ledger import (
    MIGRATIONS,
    Base,
    Episode,
    Notification,
    ledger_engine,
    migrate,
    open_ledger,
    schema_revision,
)
from churnwatch.consumers.web.users import add_user

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()
AT = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)


def differences(url: str) -> list[object]:
    with ledger_engine(url).connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_a_new_ledger_is_at_the_newest_revision_with_the_models_schema(ledger_url):
    open_ledger(ledger_url)
    assert schema_revision(ledger_engine(ledger_url)) == HEAD
    assert differences(ledger_url) == []  # the migrations make exactly the models' tables


def first_schema_rows(url: str) -> None:
    """A ledger at the first revision, with an episode and its notification, written
    as that release wrote them (its tables only)."""
    engine = ledger_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO episodes (warning_id, customer_id, customer_name, owner, segment,"
                " warning_type, severity, status, opened_at, summary, evidence, action,"
                " expected_loss, received_at) VALUES ('w-1', 'C1', 'Cedar', 'rep1', 'key',"
                " 'sales_drop', 'high', 'open', :at, 'down 40%', '{}', 'call', 1200.0, :at)"
            ),
            {"at": AT},
        )
        connection.execute(
            text(
                "INSERT INTO notifications (short_id, dedup_key, warning_id, customer_id,"
                " recipient, channel, kind, status, subject, body_text, body_markdown,"
                " created_at, due_at, attempts) VALUES ('a1b2', 'opened|w-1|rep1|email',"
                " 'w-1', 'C1', 'rep1', 'email', 'opened', 'sent', 's', 't', 'm', :at, :at, 1)"
            ),
            {"at": AT},
        )


@pytest.mark.parametrize("made_before_migrations", [False, True])
@pytest.mark.parametrize("revision", ["0001", "0002"])
def test_an_older_ledger_is_upgraded_keeping_its_rows(ledger_url, revision, made_before_migrations):
    """From each older revision; ``made_before_migrations``: the same tables with no
    revision recorded (what releases before the migrations left: recognised by
    the tables it has)."""
    engine = ledger_engine(ledger_url)
    migrate(engine, revision)
    first_schema_rows(ledger_url)
    if made_before_migrations:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        assert schema_revision(engine) is None
    sessions = open_ledger(ledger_url)
    assert schema_revision(engine) == HEAD
    assert differences(ledger_url) == []
    with sessions.begin() as session:
        episode = session.get(Episode, "w-1")
        assert episode is not None and episode.opened_at == AT and episode.owner == "rep1"
        assert session.query(Notification).filter_by(warning_id="w-1").one().status == "sent"
        add_user(session, "ann", "correct horse", "rep", "rep1")  # a table of a later revision


def test_processes_opening_a_new_ledger_at_once_all_get_it(ledger_url):
    """A dispatcher, two web processes and the CLI start together on a new ledger:
    one migrates, the others wait for it (an advisory lock, a lock file)."""
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: open_ledger(ledger_url), range(4)))
    assert len(opened) == 4
    assert schema_revision(ledger_engine(ledger_url)) == HEAD
    with opened[0].begin() as session:
        assert session.query(Episode).count() == 0
