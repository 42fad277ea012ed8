"""Noise control: who is told of an episode, and, each time a notice is due, whether now.

Who is told is decided when a notice is queued (the routing file). Whether it
goes out is decided by the delivery stages, run on a notice each time it is
about to be sent, and again before every retry, as Alertmanager's notify
pipeline does, so a snooze set in the inbox while a notice waits for its
delivery window still holds it back. In order:

1. **resolved**: a notice of an episode that has ended is ``superseded``, and so
   is a task's notice once the task is closed;
2. **dedup**: so is one that a newer notice of the same episode to the same
   recipient and channel is waiting behind (only the newest news goes out);
3. **inhibit**: a warning held back by an open one (``inhibit`` in the routing
   file) is ``inhibited`` until that one closes;
4. **snooze**: a snoozed customer's notice is ``snoozed``; it is reminded of
   when the snooze ends, if still open;
5. **time window**: outside the recipient's delivery window it waits for the
   window to open;
6. **cap**: past the recipient's daily cap it is ``capped`` and goes into the
   digest.

A notice that passes every stage is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import (
    TELLS_OPEN,
    Customer,
    Episode,
    Notification,
    Task,
    active_snoozes,
    current_owner,
)
from churnwatch.consumers.alerts.routing import Recipient, Routing
from churnwatch.core.settings import AlertSettings


@dataclass(frozen=True)
class Hold:
    """A stage's decision not to send now: the notice's new status, and until when it
    waits (``pending``: due again then; ``snoozed``: reminded of then)."""

    status: str
    until: datetime | None = None


@dataclass(frozen=True)
class Due:
    """A notice about to go out: the notice, its episode (none for a digest), its
    recipient and the time."""

    note: Notification
    episode: Episode | None
    recipient: Recipient
    now: datetime


Stage = Callable[[Session, Due], Hold | None]


class Policy:
    """The routing file and the alert settings, asked over the ledger."""

    def __init__(self, settings: AlertSettings, routing: Routing) -> None:
        self.settings = settings
        self.routing = routing
        #: The delivery stages, in the order they run (the module's docstring).
        self.stages: tuple[Stage, ...] = (
            self._resolved,
            self._dedup,
            self._inhibit,
            self._snooze,
            self._window,
            self._cap,
        )

    def owner(self, session: Session, episode: Episode) -> str:
        """The episode's customer's owner now (a hand-over's, else the pipeline's; ""
        for none)."""
        customer = session.get(Customer, episode.customer_id)
        reported = episode.owner or (customer.owner if customer else "")
        return current_owner(session, episode.customer_id, reported)

    def recipients(self, session: Session, episode: Episode) -> list[tuple[str, Recipient]]:
        customer = session.get(Customer, episode.customer_id)
        names = self.routing.route(
            self.owner(session, episode),
            episode.warning_type,  # type: ignore[arg-type]
            episode.severity,  # type: ignore[arg-type]
            episode.segment or (customer.segment if customer else ""),
            customer.region if customer else "",
        )
        return [(name, self.routing.recipient(name)) for name in names]

    def hold(self, session: Session, due: Due) -> Hold | None:
        """The first stage that holds the notice back, or None: send it now."""
        for stage in self.stages:
            decision = stage(session, due)
            if decision is not None:
                return decision
        return None

    # -- the stages --------------------------------------------------------

    def _resolved(self, session: Session, due: Due) -> Hold | None:
        if due.note.task_id is not None:  # a task notice: old news once the task closed
            task = session.get(Task, due.note.task_id)
            return Hold("superseded") if task is None or task.state != "open" else None
        if due.note.kind in TELLS_OPEN and due.episode is not None:
            if due.episode.status != "open":
                return Hold("superseded")  # it ended while the notice waited: old news
        return None

    def _dedup(self, session: Session, due: Due) -> Hold | None:
        note = due.note
        if note.kind not in TELLS_OPEN:
            return None
        newer = session.scalar(
            select(Notification.id).where(
                Notification.warning_id == note.warning_id,
                Notification.recipient == note.recipient,
                Notification.channel == note.channel,
                Notification.kind.in_(TELLS_OPEN),
                Notification.status == "pending",
                Notification.id > note.id,
            )
        )
        return Hold("superseded") if newer is not None else None

    def _inhibit(self, session: Session, due: Due) -> Hold | None:
        if due.note.kind not in TELLS_OPEN or due.episode is None:
            return None
        holders = self.routing.held_by(due.episode.warning_type)  # type: ignore[arg-type]
        if self.open_of(session, due.episode.customer_id, list(holders)):
            return Hold("inhibited")
        return None

    def _snooze(self, session: Session, due: Due) -> Hold | None:
        if due.episode is None:
            return None
        ends = [
            s.until
            for s in active_snoozes(session, due.episode.customer_id, due.now)
            if s.warning_type in (None, due.episode.warning_type)
        ]
        return Hold("snoozed", max(ends)) if ends else None

    def _window(self, session: Session, due: Due) -> Hold | None:
        opens = due.recipient.window.next_open(due.now)
        return Hold("pending", opens) if opens > due.now else None

    def _cap(self, session: Session, due: Due) -> Hold | None:
        if due.note.kind not in TELLS_OPEN:
            return None
        if self.sent_today(session, due.note.recipient, due.recipient, due.now) >= (
            self.settings.daily_cap
        ):
            return Hold("capped")
        return None

    # -- questions the stages and the dispatcher ask -------------------------

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

    def sent_today(self, session: Session, name: str, recipient: Recipient, now: datetime) -> int:
        """Notices of open episodes sent to ``name`` since the start of their local day."""
        zone = ZoneInfo(recipient.window.timezone)
        start = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), zone)
        query = select(func.count(Notification.id)).where(
            Notification.recipient == name,
            Notification.kind.in_(TELLS_OPEN),
            Notification.status == "sent",
            Notification.sent_at >= start,
        )
        return int(session.scalar(query) or 0)

    def next_digest(self, recipient: Recipient, now: datetime, *, after_today: bool) -> datetime:
        """The recipient's next digest hour, in their zone: today's, or tomorrow's once
        today's has passed (``after_today``: tomorrow's in any case). A warning that
        comes after today's digest waits for tomorrow's, rather than bringing a
        digest on the heels of its own message."""
        zone = ZoneInfo(recipient.window.timezone)
        day = now.astimezone(zone).date()
        hour = datetime.min.time().replace(hour=self.settings.digest_hour)
        today = datetime.combine(day, hour, zone)
        if after_today or today <= now:
            return datetime.combine(day.fromordinal(day.toordinal() + 1), hour, zone)
        return today
