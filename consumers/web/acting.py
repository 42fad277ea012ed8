"""What acting on a customer writes to the ledger, the same rows whether from
the customer page (``app._act``) or a one-click link in a notification
(``one_click``): the action itself, and the snooze or the outcome it sets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import (
    Action,
    Episode,
    add_feedback,
    add_snooze,
    last_short_id,
)


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
    """What came of a warning, as ``churnwatch alerts feedback`` records it too."""
    quoted = last_short_id(session, episode.warning_id)
    add_feedback(session, quoted or "", episode.warning_id, verdict, note, now)
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
