"""The account feed: what a CRM needs to keep an account's fields current.

Each change (``pipeline.events.AccountChange``: a health band crossed, a warning
opened, got worse or resolved, a task opened or closed) is written to the
ledger's ``feed_out`` (one row per target) in the same transaction as what it
reports, then delivered from there, as notifications are from the outbox:

- to the **health topic**, the changes the dispatcher makes (warnings and
  tasks; the worker puts the band changes there itself), when a publisher is
  given (``run_dispatcher`` gives one: a Kafka producer);
- to each **webhook** under ``feed`` in the routing file, every change, the
  band changes read back from the health topic included: a JSON POST of the
  change, any 2xx accepted.

Each target gets the changes in the order they were made: a failed delivery
holds its target back (doubling, up to ``alerts.retry_max_seconds``), the
changes after it waiting behind it, and is tried again; nothing is dropped,
and a change can arrive twice (after a crash between a send and its commit):
receivers dedup by ``change_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.consumers.alerts.ledger import Episode, FeedOut, Task, next_pending
from churnwatch.consumers.alerts.outbox import retry_wait
from churnwatch.consumers.alerts.routing import FeedWebhook, Routing, RoutingError
from churnwatch.core.settings import AlertSettings
from churnwatch.pipeline.events import AccountChange, change_id

log = logging.getLogger(__name__)

#: Sends one change (key, JSON) to the health topic; raises if it did not land.
Publisher = Callable[[bytes, bytes], None]
#: The target name of the health topic in ``feed_out``.
TOPIC = "topic"
#: How long a webhook may take to answer.
TIMEOUT_SECONDS = 10.0


def warning_change(episode: Episode, kind: str, at: datetime) -> AccountChange:
    """``warning_opened``, ``warning_escalated`` or ``warning_resolved`` of an episode."""
    return AccountChange(
        change_id=change_id(episode.warning_id, kind, episode.severity),
        change=kind,
        customer_id=episode.customer_id,
        customer_name=episode.customer_name,
        owner=episode.owner,
        segment=episode.segment,
        at=at,
        warning_id=episode.warning_id,
        warning_type=episode.warning_type,
        severity=episode.severity,
    )


def task_change(task: Task, episode: Episode, at: datetime) -> AccountChange:
    """``task_opened`` or ``task_closed``, as the task is now."""
    kind = "task_opened" if task.state == "open" else "task_closed"
    return AccountChange(
        change_id=change_id(task.key, kind),
        change=kind,
        customer_id=task.customer_id,
        customer_name=episode.customer_name,
        owner=task.owner,
        segment=episode.segment,
        at=at,
        warning_id=task.warning_id,
        warning_type=episode.warning_type,
        severity=task.severity,
        task_id=task.id,
        task_state=task.state,
        task_due_at=task.due_at,
        task_outcome=task.outcome,
        task_text=task.text,
    )


class Feed:
    """Queues account changes in the ledger and delivers them to their targets."""

    def __init__(
        self,
        settings: AlertSettings,
        routing: Routing,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        publish: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.webhooks = {hook.name: hook for hook in routing.feed}
        self.sessions = sessions
        self.clock = clock
        self.publish = publish

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.publish is not None

    def add(self, session: Session, change: AccountChange, *, on_topic: bool = False) -> int:
        """Queue ``change`` for every target (``on_topic``: it came from the health
        topic, so only the webhooks); returns how many rows are new."""
        targets = list(self.webhooks)
        if self.publish is not None and not on_topic:
            targets.append(TOPIC)
        now = self.clock()
        body = change.model_dump_json()
        added = 0
        for target in targets:
            taken = select(FeedOut.id).where(
                FeedOut.change_id == change.change_id, FeedOut.target == target
            )
            if session.scalar(taken) is not None:
                continue  # (a redelivered record)
            session.add(
                FeedOut(
                    change_id=change.change_id,
                    target=target,
                    customer_id=change.customer_id,
                    body=body,
                    status="pending",
                    attempts=0,
                    error="",
                    created_at=now,
                    due_at=now,
                )
            )
            added += 1
        return added

    def deliver_due(self, limit: int = 200) -> int:
        """Deliver the due changes, one by one (each committed after its attempt;
        ``FOR UPDATE SKIP LOCKED``: another dispatcher's claim is skipped)."""
        if not self.enabled:
            return 0
        now = self.clock()
        sent = 0
        seen: list[int] = []
        with self.sessions() as session:
            while len(seen) < limit:
                row: FeedOut | None = next_pending(session, FeedOut, now, seen)
                if row is None:
                    break
                seen.append(row.id)
                error = self._send(row)
                row.attempts += 1
                if error is None:
                    row.status, row.sent_at, row.error = "sent", self.clock(), ""
                    sent += 1
                else:
                    wait = retry_wait(self.settings, row.attempts)
                    row.error = error[:500]
                    # the target waits, not just this change: the changes after it
                    # stay behind it, so each target gets them in order
                    session.execute(
                        update(FeedOut)
                        .where(FeedOut.target == row.target, FeedOut.status == "pending")
                        .values(due_at=self.clock() + timedelta(seconds=wait))
                    )
                    log.warning(
                        "account feed %s to %s failed (attempt %d, next in %.0f s): %s",
                        row.change_id,
                        row.target,
                        row.attempts,
                        wait,
                        error,
                    )
                session.commit()
        return sent

    def _send(self, row: FeedOut) -> str | None:
        """Deliver one row; None when its target took it, else why not."""
        if row.target == TOPIC:
            if self.publish is None:
                return "no Kafka producer in this process"
            try:
                self.publish(row.customer_id.encode(), row.body.encode())
            except Exception as exc:  # the broker away: the row waits and is tried again
                return f"{type(exc).__name__}: {exc}"
            return None
        hook: FeedWebhook | None = self.webhooks.get(row.target)
        if hook is None:
            return f"{row.target} is no longer under feed in the routing file"
        try:
            answer = requests.post(
                hook.url(),
                data=row.body.encode(),
                headers={
                    "Content-Type": "application/json",
                    "X-Churnwatch-Change": row.change_id,
                    **hook.filled_headers(),
                },
                timeout=TIMEOUT_SECONDS,
            )
        except RoutingError as exc:
            return str(exc)
        except requests.RequestException as exc:  # (its text has the URL: not logged)
            return f"{type(exc).__name__}: no answer from {row.target}"
        if not answer.ok:
            return f"HTTP {answer.status_code}: {answer.text[:200]}"
        return None
