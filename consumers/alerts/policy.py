"""Noise control: who is told of an episode, and whether now.

In order: a snoozed customer's notifications are recorded as ``snoozed``; a
warning held back by an open one (``inhibit`` in the routing file) is
``inhibited`` (and listed inside the open one's message); past the
recipient's daily cap it is ``capped`` and goes into the digest; otherwise
it is ``pending`` until the recipient's delivery window opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import (
    TELLS_OPEN,
    Customer,
    Episode,
    Notification,
    NotificationKind,
    active_snoozes,
    current_owner,
)
from churnwatch.consumers.alerts.routing import Recipient, Routing
from churnwatch.core.settings import AlertSettings


class Policy:
    """The routing file and the alert settings, asked over the ledger."""

    def __init__(self, settings: AlertSettings, routing: Routing) -> None:
        self.settings = settings
        self.routing = routing

    def recipients(self, session: Session, episode: Episode) -> list[tuple[str, Recipient]]:
        customer = session.get(Customer, episode.customer_id)
        reported = episode.owner or (customer.owner if customer else "")
        names = self.routing.route(
            current_owner(session, episode.customer_id, reported),
            episode.warning_type,  # type: ignore[arg-type]
            episode.severity,  # type: ignore[arg-type]
            episode.segment or (customer.segment if customer else ""),
            customer.region if customer else "",
        )
        return [(name, self.routing.recipient(name)) for name in names]

    def snoozed(self, session: Session, episode: Episode, now: datetime) -> bool:
        return any(
            s.warning_type in (None, episode.warning_type)
            for s in active_snoozes(session, episode.customer_id, now)
        )

    def open_of(self, session: Session, customer_id: str, types: Sequence[str]) -> list[Episode]:
        if not types:
            return []
        query = select(Episode).where(
            Episode.customer_id == customer_id,
            Episode.status == "open",
            Episode.warning_type.in_(types),
        )
        return list(session.scalars(query))

    def held(self, session: Session, episode: Episode) -> list[Episode]:
        """Open episodes of the customer that this episode's type holds back."""
        held_types = [
            t for i in self.routing.inhibit if i.while_open == episode.warning_type for t in i.hold
        ]
        return self.open_of(session, episode.customer_id, held_types)

    def day_count(self, session: Session, name: str, recipient: Recipient, now: datetime) -> int:
        zone = ZoneInfo(recipient.window.timezone)
        local = now.astimezone(zone)
        start = datetime.combine(local.date(), datetime.min.time(), zone)
        query = select(func.count(Notification.id)).where(
            Notification.recipient == name,
            Notification.kind.in_(TELLS_OPEN),
            Notification.status.in_(["pending", "sent"]),
            Notification.created_at >= start,
        )
        return int(session.scalar(query) or 0)

    def status(
        self, session: Session, episode: Episode, kind: str, name: str, r: Recipient, now: datetime
    ) -> str:
        if self.snoozed(session, episode, now):
            return "snoozed"
        if kind == NotificationKind.RESOLVED:
            return "pending"
        holders = self.routing.held_by(episode.warning_type)  # type: ignore[arg-type]
        if self.open_of(session, episode.customer_id, list(holders)):
            return "inhibited"
        if self.day_count(session, name, r, now) >= self.settings.daily_cap:
            return "capped"
        return "pending"
