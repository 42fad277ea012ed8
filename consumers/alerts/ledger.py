"""The alert ledger: every episode, notification, delivery attempt, snooze and feedback.

SQLAlchemy, so the default SQLite file can be swapped for PostgreSQL by URL
(``alerts.ledger_url``). Notifications double as the outbox: a notification is
written (``pending``) before it is sent, and stays pending, retried with
backoff, until a channel accepts it; a dispatcher restart picks it up again.
Unique keys make redelivered warnings harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """Master data from the customers topic (for routing by region)."""

    __tablename__ = "customers"
    customer_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    segment: Mapped[str] = mapped_column(String(50), default="")
    region: Mapped[str] = mapped_column(String(50), default="")


class Episode(Base):
    """A warning episode as the worker reported it."""

    __tablename__ = "episodes"
    warning_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(100), index=True)
    customer_name: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    segment: Mapped[str] = mapped_column(String(50), default="")
    warning_type: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))  # open | resolved
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    action: Mapped[str] = mapped_column(Text, default="")
    churn_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    expected_loss: Mapped[float] = mapped_column(Float, default=0.0)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Notification(Base):
    """One message to one recipient through one channel; also the outbox entry."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    short_id: Mapped[str] = mapped_column(String(12), unique=True)
    dedup_key: Mapped[str] = mapped_column(String(300), unique=True)
    warning_id: Mapped[str | None] = mapped_column(
        ForeignKey("episodes.warning_id"), nullable=True, index=True
    )
    customer_id: Mapped[str] = mapped_column(String(100), default="", index=True)
    recipient: Mapped[str] = mapped_column(String(200), index=True)
    channel: Mapped[str] = mapped_column(String(200))  # a safe label, never the URL
    #: opened | escalated | reminder | resolved | digest
    kind: Mapped[str] = mapped_column(String(20))
    #: pending (in the outbox) | sent | snoozed | inhibited (until its holder closes)
    #: | capped (into the digest) | superseded (old news by the time it was due: its
    #: episode resolved, or a newer notice of it was waiting too); decided by the
    #: delivery stages when it is due (consumers/alerts/policy.py), not when queued
    status: Mapped[str] = mapped_column(String(20), index=True)
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_markdown: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    #: the task a ``task_overdue`` or ``task_escalated`` notice is about
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), nullable=True, index=True)


class Task(Base):
    """What the account owner is to do about a warning (``consumers/alerts/tasks.py``):
    one per opened or escalated episode, due by its severity."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: ``<warning_id>|<severity>``: a redelivered record finds its task made
    key: Mapped[str] = mapped_column(String(80), unique=True)
    warning_id: Mapped[str] = mapped_column(ForeignKey("episodes.warning_id"), index=True)
    customer_id: Mapped[str] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    severity: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(10), index=True)  # one of TASK_STATES
    #: done: the verdict (VERDICTS), or "resolved" when its warning cleared;
    #: dropped: "escalated" (a newer task took over) or "" (someone dropped it)
    outcome: Mapped[str] = mapped_column(String(20), default="")
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    closed_by: Mapped[str] = mapped_column(String(100), default="")
    #: when the owner was reminded that it is overdue, and when its manager was told
    reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    #: when the dispatcher next looks at it (its due time, then the manager's turn)
    check_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    #: it opened or closed since the account feed last heard (whoever closed it)
    feed_due: Mapped[bool] = mapped_column(default=True, index=True)


class FeedOut(Base):
    """One account change on its way to one target of the account feed
    (``consumers/alerts/feed.py``): the health topic or a ``feed`` webhook; an
    outbox like the notifications', kept until it is delivered."""

    __tablename__ = "feed_out"
    __table_args__ = (UniqueConstraint("change_id", "target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    change_id: Mapped[str] = mapped_column(String(40))
    #: "topic", or the webhook's safe label (never its URL)
    target: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)  # the AccountChange as JSON
    status: Mapped[str] = mapped_column(String(10), index=True)  # pending | sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ReminderDue(Base):
    """When a recipient's channel is next reminded of an open episode: set when a notice
    of it is sent (after the cooldown) or snoozed (when the snooze ends)."""

    __tablename__ = "reminders_due"
    warning_id: Mapped[str] = mapped_column(ForeignKey("episodes.warning_id"), primary_key=True)
    recipient: Mapped[str] = mapped_column(String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(String(200), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class DigestDue(Base):
    """When a recipient's next daily digest is due (while they have open warnings)."""

    __tablename__ = "digests_due"
    recipient: Mapped[str] = mapped_column(String(200), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class Attempt(Base):
    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    ok: Mapped[bool] = mapped_column()
    error: Mapped[str] = mapped_column(Text, default="")


class Snooze(Base):
    __tablename__ = "snoozes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(100), index=True)
    warning_type: Mapped[str | None] = mapped_column(String(40), nullable=True)  # None: all
    until: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lifted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    short_id: Mapped[str] = mapped_column(String(12), index=True)
    warning_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    verdict: Mapped[str] = mapped_column(String(20))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class User(Base):
    """Someone who signs in to the web inbox (``churnwatch web users``)."""

    __tablename__ = "users"
    username: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: argon2 hash (never the password itself)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # one of ROLES
    #: the customers topic's ``owner`` value of the customers this person owns
    owner: Mapped[str] = mapped_column(String(200), default="")
    team: Mapped[str] = mapped_column(String(100), default="")
    language: Mapped[str] = mapped_column(String(10), default="en")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: when the inbox was last shown to them (what is "new since the last visit")
    inbox_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Action(Base):
    """What someone did about a customer or one of its warnings, from the web inbox."""

    __tablename__ = "actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(100), index=True)
    warning_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # one of ACTION_KINDS
    #: the outcome, the snooze's end, the new owner: what the kind needs
    detail: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class UsedLink(Base):
    """A one-click link from a notification that has acted (``consumers/alerts/links.py``):
    a link acts once."""

    __tablename__ = "used_links"
    link_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    warning_id: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))
    used_at: Mapped[datetime] = mapped_column(UtcDateTime())


#: Who may do what in the web inbox: a rep their own customers, a manager their team's
#: (everyone's without a team), an admin everyone's and the users.
ROLES = ("rep", "manager", "admin")
ACTION_KINDS = (
    "acknowledged",
    "snoozed",
    "unsnoozed",
    "outcome",
    "handed_over",
    "task_dropped",
)
TASK_STATES = ("open", "done", "dropped")
#: What came of a warning (``churnwatch alerts feedback``, the web inbox's outcome).
VERDICTS = (
    "contacted",
    "saved",
    "lost",
    "false_alarm",
    "acted",
    "already_known",
    "not_reachable",
)
#: The outcomes the web inbox offers.
OUTCOMES = ("contacted", "saved", "lost", "false_alarm")
#: The longest note or reason the ledger takes.
NOTE_LIMIT = 2000


class NotificationKind(StrEnum):
    """Every kind of notification the ledger stores (the ``kind`` column)."""

    OPENED = "opened"
    ESCALATED = "escalated"
    REMINDER = "reminder"
    RESOLVED = "resolved"
    DIGEST = "digest"
    TASK_OVERDUE = "task_overdue"  # to the owner, once a task is past its due time
    TASK_ESCALATED = "task_escalated"  # to the owner's manager, when still not done


NOTIFICATION_KINDS = tuple(kind.value for kind in NotificationKind)
#: The kinds that tell someone of an episode still open: whoever got one of
#: these hears when it resolves.
TELLS_OPEN = (NotificationKind.OPENED, NotificationKind.REMINDER, NotificationKind.ESCALATED)


def short_id(session: Session, dedup_key: str) -> str:
    """A short, stable reference for a notification (the one quoted in feedback).

    Eight hex digits of the key's hash; one more digit at a time (up to 11,
    what the column holds) while another notification already has it, so two
    keys whose hashes start alike never share an id (with 8 digits that
    happens about once in 100,000 notifications).
    """
    digest = hashlib.sha256(dedup_key.encode()).hexdigest().upper()
    for digits in range(8, 12):
        candidate = "N" + digest[:digits]
        holder = session.scalar(
            select(Notification.dedup_key).where(Notification.short_id == candidate)
        )
        if holder is None or holder == dedup_key:
            return candidate
    raise LedgerError(f"no free short id for {dedup_key!r}: 11 hex digits all taken")


class LedgerError(RuntimeError):
    """The ledger cannot record something."""


def add_snooze(
    session: Session,
    customer_id: str,
    warning_type: str | None,
    until: datetime,
    reason: str,
    now: datetime,
) -> Snooze:
    """Hold ``customer_id``'s notifications (of one type, or all) back until ``until``."""
    if until <= now:
        raise LedgerError("a snooze must end in the future")
    snooze = Snooze(
        customer_id=customer_id,
        warning_type=warning_type,
        until=until,
        reason=reason,
        created_at=now,
    )
    session.add(snooze)
    return snooze


def active_snoozes(session: Session, customer_id: str, now: datetime) -> list[Snooze]:
    return list(
        session.scalars(
            select(Snooze).where(
                Snooze.customer_id == customer_id,
                Snooze.lifted_at.is_(None),
                Snooze.until > now,
            )
        )
    )


def lift_snoozes(session: Session, customer_id: str, now: datetime) -> int:
    """End every snooze of ``customer_id`` now; returns how many there were. The
    reminders the snoozes had put off to their end are due at once."""
    active = active_snoozes(session, customer_id, now)
    for snooze in active:
        snooze.lifted_at = now
    ends = {snooze.until for snooze in active}
    put_off = select(ReminderDue).join(Episode, Episode.warning_id == ReminderDue.warning_id)
    for due in session.scalars(put_off.where(Episode.customer_id == customer_id)):
        if due.due_at in ends:  # put off to this snooze's end (the snooze stage's plan)
            due.due_at = now
    return len(active)


def schedule_reminder(session: Session, note: Notification, at: datetime) -> None:
    """Remind ``note``'s recipient on its channel of its episode at ``at`` (replacing an
    earlier plan: the newest notice sets the next reminder)."""
    if note.warning_id is None:
        return  # a digest: nothing to remind of
    key = (note.warning_id, note.recipient, note.channel)
    due = session.get(ReminderDue, key)
    if due is None:
        session.add(ReminderDue(warning_id=key[0], recipient=key[1], channel=key[2], due_at=at))
    else:
        due.due_at = at


def add_feedback(
    session: Session,
    short_id: str,
    warning_id: str | None,
    verdict: str,
    note: str,
    now: datetime,
) -> Feedback:
    """Record what came of a warning (``short_id``: the notification quoted, or "")."""
    if verdict not in VERDICTS:
        raise LedgerError(f"unknown outcome {verdict!r} (one of {', '.join(VERDICTS)})")
    feedback = Feedback(
        short_id=short_id, warning_id=warning_id, verdict=verdict, note=note, at=now
    )
    session.add(feedback)
    return feedback


def find_notifications(
    session: Session,
    customer: str | None = None,
    recipient: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[Notification]:
    """Notifications newest first, of this customer, recipient, status and kind
    where given (``churnwatch alerts list``)."""
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    for column, value in (
        (Notification.customer_id, customer),
        (Notification.recipient, recipient),
        (Notification.status, status),
        (Notification.kind, kind),
    ):
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query))


def notification_by_short_id(session: Session, short: str) -> Notification | None:
    """The notification a message quoted (its short id), if any."""
    return session.scalar(select(Notification).where(Notification.short_id == short))


def notifications_by_status(session: Session) -> dict[str, int]:
    """How many notifications the ledger holds in each status."""
    rows = session.execute(
        select(Notification.status, func.count(Notification.id)).group_by(Notification.status)
    ).all()
    return {status: count for status, count in sorted(rows)}


def next_pending(
    session: Session, table: type[Notification] | type[FeedOut], now: datetime, seen: list[int]
) -> Any:
    """Claim the next pending row of ``table`` (the notifications or the account
    feed's outbox) due by ``now`` and not in ``seen``: ``FOR UPDATE SKIP LOCKED``,
    so a row another dispatcher is sending is skipped."""
    return session.scalar(
        select(table)
        .where(table.status == "pending", table.due_at <= now, table.id.not_in(seen))
        .order_by(table.due_at, table.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def due_notifications(session: Session, now: datetime) -> int:
    """Notifications due by ``now`` and not yet delivered (not those waiting for a window)."""
    query = select(func.count(Notification.id)).where(
        Notification.status == "pending", Notification.due_at <= now
    )
    return int(session.scalar(query) or 0)


def last_short_id(session: Session, warning_id: str) -> str | None:
    """The short id of the newest notification about a warning (what a reply quotes)."""
    return session.scalar(
        select(Notification.short_id)
        .where(Notification.warning_id == warning_id)
        .order_by(Notification.id.desc())
        .limit(1)
    )


def current_owner(session: Session, customer_id: str, reported: str) -> str:
    """The customer's owner: the last hand-over's, else the one the pipeline reports."""
    handed = session.scalar(
        select(Action.detail)
        .where(Action.customer_id == customer_id, Action.kind == "handed_over")
        .order_by(Action.id.desc())
        .limit(1)
    )
    return handed if handed is not None else reported


def open_ledger(url: str) -> sessionmaker[Any]:
    """Connect, creating the SQLite folder if needed, and bring the ledger's schema
    up to this release's (:func:`migrate`)."""
    engine = ledger_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


def ledger_engine(url: str) -> Engine:
    """The ledger's engine (a SQLite ledger's folder is made if missing)."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ledger's URL (None: another database, or in memory)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        return Path(url.removeprefix("sqlite:///"))
    return None


#: The ledger's migrations (Alembic), shipped with the package.
MIGRATIONS = resources.files("churnwatch.consumers.alerts") / "migrations"
#: Ledgers made before migrations, by the newest table they have, newest first:
#: each is stamped at the revision whose schema it has, then upgraded from there.
_BEFORE_MIGRATIONS = (("reminders_due", "0003"), ("users", "0002"), ("episodes", "0001"))
#: Any number, the same in every process: PostgreSQL's advisory lock under which
#: one process migrates while the others (dispatchers, web processes) wait.
MIGRATION_LOCK = 7_220_501


def migrate(engine: Engine, to: str = "head") -> None:
    """Upgrade the ledger's schema to ``to`` (Alembic: ``migrations/versions``), in
    one transaction that one process at a time runs (PostgreSQL: an advisory lock;
    SQLite: a lock file beside the database). A ledger older than the migrations
    is recognised by its tables and upgraded from the schema it has."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _one_at_a_time(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables:
            made = next((rev for table, rev in _BEFORE_MIGRATIONS if table in tables), None)
            if made is not None:
                command.stamp(config, made)
        command.upgrade(config, to)


def schema_revision(engine: Engine) -> str | None:
    """The ledger's schema revision (None: no ledger there yet, or one made before
    migrations)."""
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _one_at_a_time(engine: Engine) -> Iterator[None]:
    """A lock file beside a SQLite ledger, held while the block runs (PostgreSQL
    locks inside the transaction; an in-memory ledger has one process)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
