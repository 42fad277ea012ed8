"""What acting on a customer writes to the ledger, the same rows whether from
the customer page (``app._act``) or a one-click link in a notification
(``one_click``): the action itself, and the snooze, the outcome or the task it sets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import (
    Action,
    Episode,
    Task,
    add_feedback,
    add_snooze,
    last_short_id,
)
from churnwatch.consumers.alerts.tasks import close, close_tasks, hand_over


def acknowledge(session: Session, episode: Episode, by: str, now: datetime) -> Action:
    record = Action(
        customer_id=episode.customer_id,
        warning_id=episode.warning_id,
        kind="acknowledged",
        by=by,
        at=now,
    )
    session.add(record)
    return record


def snooze(
    session: Session,
    customer_id: str,
    warning_type: str | None,
    until: datetime,
    reason: str,
    by: str,
    now: datetime,
) -> Action:
    """Snooze the customer (one warning type, or all) until ``until`` (LedgerError if refused)."""
    add_snooze(session, customer_id, warning_type, until, reason, now)
    detail = f"{until.date().isoformat()} {warning_type or ''}".strip()
    record = Action(
        customer_id=customer_id, kind="snoozed", detail=detail, note=reason, by=by, at=now
    )
    session.add(record)
    return record


def record_outcome(
    session: Session, episode: Episode, verdict: str, note: str, by: str, now: datetime
) -> Action:
    """What came of a warning, as ``churnwatch alerts feedback`` records it too: its
    open task is done, with this outcome."""
    quoted = last_short_id(session, episode.warning_id)
    add_feedback(session, quoted or "", episode.warning_id, verdict, note, now)
    close_tasks(session, [episode.warning_id], "done", verdict, by, now)
    record = Action(
        customer_id=episode.customer_id,
        warning_id=episode.warning_id,
        kind="outcome",
        detail=verdict,
        note=note,
        by=by,
        at=now,
    )
    session.add(record)
    return record


def hand_over_customer(
    session: Session, customer_id: str, owner: str, note: str, by: str, now: datetime
) -> Action:
    """The customer (and its open tasks) goes to ``owner``."""
    record = Action(
        customer_id=customer_id, kind="handed_over", detail=owner, note=note, by=by, at=now
    )
    session.add(record)
    hand_over(session, customer_id, owner)
    return record


def drop_task(session: Session, task: Task, note: str, by: str, now: datetime) -> Action:
    """Someone decided the task needs no doing (it stays in the ledger as dropped)."""
    close(task, "dropped", "", by, now)
    record = Action(
        customer_id=task.customer_id,
        warning_id=task.warning_id,
        kind="task_dropped",
        note=note,
        by=by,
        at=now,
    )
    session.add(record)
    return record
