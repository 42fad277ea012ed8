"""The outbox: pending notifications sent when due, one at a time, with retries.

Before each attempt, the first one and every retry, the delivery stages of
:class:`~churnwatch.consumers.alerts.policy.Policy` decide whether the notice
goes out now (a snooze, an inhibition, the window, the cap, or newer news can
hold it). Each notification is committed after its attempt, so a crash
repeats at most the one on its way; a failed attempt waits (doubling, up to
``alerts.retry_max_seconds``) and is tried again. A sent notice of an open
episode plans the next reminder (after the type's cooldown), a snoozed one
plans it for the snooze's end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.consumers.alerts.ledger import (
    TELLS_OPEN,
    Attempt,
    Episode,
    Notification,
    next_pending,
    schedule_reminder,
)
from churnwatch.consumers.alerts.messages import Message
from churnwatch.consumers.alerts.policy import Due, Policy
from churnwatch.consumers.alerts.routing import Routing, RoutingError
from churnwatch.core.settings import AlertSettings
from churnwatch.pipeline import metrics

log = logging.getLogger(__name__)

#: Sends one message through one Apprise URL; returns (ok, error text).
Sender = Callable[[str, Message], tuple[bool, str]]
Clock = Callable[[], datetime]


def apprise_send(url: str, message: Message) -> tuple[bool, str]:
    """Send through Apprise (Markdown body: channels that render it get the rich form)."""
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url):
        return False, "Apprise does not understand this channel's URL"
    with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
        ok = notifier.notify(
            title=message.subject,
            body=message.markdown,
            body_format=apprise.NotifyFormat.MARKDOWN,
        )
    if ok:
        return True, ""
    lines = [line for line in captured.getvalue().splitlines() if line.strip()]
    return False, (lines[-1] if lines else "the channel did not accept the message")[:500]


def retry_wait(settings: AlertSettings, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones (doubling, capped)."""
    return float(
        min(settings.retry_first_seconds * 2 ** (attempts - 1), settings.retry_max_seconds)
    )


class Outbox:
    """Delivers what the dispatcher queued in the ledger."""

    def __init__(
        self,
        settings: AlertSettings,
        routing: Routing,
        policy: Policy,
        sessions: sessionmaker[Session],
        send: Sender,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.routing = routing
        self.policy = policy
        self.sessions = sessions
        self.send = send
        self.clock = clock

    def deliver_due(self, limit: int = 200) -> int:
        """Send pending notifications whose time has come; failures wait and retry.

        Each is claimed on its own and sent under that claim (PostgreSQL: ``FOR
        UPDATE SKIP LOCKED``), so dispatchers sharing one ledger never send the same
        notification twice: a row another dispatcher is sending is skipped, and one
        it has sent is no longer pending. (SQLite has no row locks: one dispatcher
        per SQLite ledger.)"""
        now = self.clock()
        sent = 0
        seen: list[int] = []  # looked at in this call (a held one may still be due)
        with self.sessions() as session:
            while len(seen) < limit:
                note: Notification | None = next_pending(session, Notification, now, seen)
                if note is None:
                    break
                seen.append(note.id)
                if self._deliver(session, note):
                    sent += 1
                session.commit()  # one by one: a crash repeats at most one message
            depth = session.scalar(
                select(func.count(Notification.id)).where(Notification.status == "pending")
            )
            metrics.OUTBOX_DEPTH.set(int(depth or 0))
        return sent

    def _deliver(self, session: Session, note: Notification) -> bool:
        """Run the delivery stages on a claimed notification and send it if they let
        it go; True when it was sent."""
        episode = session.get(Episode, note.warning_id) if note.warning_id else None
        if self._held(session, note, episode):
            return False
        ok, error = self._send(note)
        at = self.clock()
        note.attempts += 1
        session.add(Attempt(notification_id=note.id, at=at, ok=ok, error=error))
        if ok:
            metrics.NOTIFICATIONS.labels(note.kind, "sent").inc()
            note.status, note.sent_at = "sent", at
            if note.kind in TELLS_OPEN:
                schedule_reminder(session, note, at + self.cooldown(episode))
            metrics.NOTIFICATIONS_SENT.labels(note.channel.split(":")[0]).inc()
            return True
        wait = retry_wait(self.settings, note.attempts)
        note.due_at = at + timedelta(seconds=wait)
        metrics.NOTIFICATIONS_FAILED.labels(note.channel.split(":")[0]).inc()
        log.warning(
            "delivery %s to %s via %s failed (attempt %d, next in %.0f s): %s",
            note.short_id,
            note.recipient,
            note.channel,
            note.attempts,
            wait,
            error,
        )
        return False

    def _held(self, session: Session, note: Notification, episode: Episode | None) -> bool:
        """Run the delivery stages; True when one of them holds the notice back."""
        now = self.clock()
        recipient = self.routing.recipient(note.recipient)
        hold = self.policy.hold(session, Due(note, episode, recipient, now))
        if hold is None:
            return False
        if hold.status == "pending":
            note.due_at = hold.until or now  # the delivery window: due again when it opens
            return True
        note.status = hold.status
        metrics.NOTIFICATIONS.labels(note.kind, hold.status).inc()
        if hold.status == "snoozed" and hold.until is not None and note.kind in TELLS_OPEN:
            schedule_reminder(session, note, hold.until)
        return True

    def cooldown(self, episode: Episode | None) -> timedelta:
        """How long after a notice its recipient is reminded, by the episode's type."""
        hours = self.settings.cooldown_hours
        kind = episode.warning_type if episode is not None else "*"
        return timedelta(hours=hours.get(kind, hours.get("*", 72.0)))

    def _send(self, note: Notification) -> tuple[bool, str]:
        recipient = self.routing.recipient(note.recipient)
        channel = next((c for c in recipient.channels if c.name == note.channel), None)
        if channel is None:
            return False, f"channel {note.channel} is no longer in the routing file"
        try:
            url = channel.apprise_url(self.settings.smtp)
        except RoutingError as exc:
            return False, str(exc)
        message = Message(note.subject, note.body_text, note.body_markdown)
        try:
            return self.send(url, message)
        except Exception as exc:  # a channel library error must not stop the outbox
            return False, f"{type(exc).__name__}: {exc}"[:500]
