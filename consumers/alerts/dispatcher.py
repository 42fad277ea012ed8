"""The alert dispatcher: turns warning records into notifications, and delivers them.

As in Alertmanager's notification pipeline: :class:`Dispatcher` takes
episode changes in and queues notifications in the ledger (reminders and
digests too, when their due times come), :class:`~churnwatch.consumers.alerts.policy.Policy`
decides who is told, and, each time a notice is due, whether now (its
delivery stages), :class:`~churnwatch.consumers.alerts.outbox.Outbox`
delivers (no Kafka in any of them: the tests drive them with a clock of
their own).
:func:`run_dispatcher` feeds it from the warnings and customers topics and
commits offsets only after the ledger has the records, so a crash or a
redelivery never loses or repeats a notification (the ledger's unique keys
drop the repeats).

Noise control (snoozes, inhibitions, daily caps, delivery windows) is the
policy's, see :mod:`churnwatch.consumers.alerts.policy`. An open episode is
notified again after its cooldown; a resolved one gets a short message to
whoever heard about it, and its notices still waiting in the outbox are
``superseded`` when they come due: never sent, so nobody hears "opened" for
something already over.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.consumers.alerts.feed import Feed, Publisher, task_change, warning_change
from churnwatch.consumers.alerts.ledger import (
    TELLS_OPEN,
    Customer,
    DigestDue,
    Episode,
    Notification,
    NotificationKind,
    ReminderDue,
    Task,
    active_snoozes,
    open_ledger,
    schedule_reminder,
    short_id,
)
from churnwatch.consumers.alerts.links import ActionLinks
from churnwatch.consumers.alerts.messages import (
    Message,
    digest_message,
    episode_message,
    page_link,
    task_message,
)
from churnwatch.consumers.alerts.outbox import Clock, Outbox, Sender, apprise_send
from churnwatch.consumers.alerts.policy import Policy
from churnwatch.consumers.alerts.routing import Channel, Recipient, Routing, load_routing
from churnwatch.consumers.alerts.tasks import BY_PIPELINE, close_tasks, open_task
from churnwatch.core.settings import AlertSettings, Settings
from churnwatch.core.topics import ThroughOutages, Topic, subscribed
from churnwatch.pipeline import metrics
from churnwatch.pipeline.events import (
    AccountChange,
    CustomerUpdated,
    WarningRecord,
    decode_message,
)

log = logging.getLogger(__name__)


def _key(episode: Episode, kind: str, name: str, channel: Channel) -> str:
    """The unique key of one notification: a redelivered record finds it taken."""
    return f"{episode.warning_id}|{kind}|{name}|{channel.name}"


class Dispatcher:
    def __init__(
        self,
        settings: AlertSettings,
        routing: Routing,
        sessions: sessionmaker[Session],
        send: Sender = apprise_send,
        clock: Clock = lambda: datetime.now(UTC),
        base_url: str = "",
        links: ActionLinks | None = None,
        publish: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = base_url  # the web inbox: messages link to the customer's page
        # the one-click links a message about an open warning carries (none without them)
        self.links = links or ActionLinks("", "", 1)
        self.routing = routing
        self.sessions = sessions
        self.clock = clock
        self.policy = Policy(settings, routing)
        self.outbox = Outbox(settings, routing, self.policy, sessions, send, clock)
        # the account feed: to the health topic (with ``publish``) and the feed webhooks
        self.feed = Feed(settings, routing, sessions, clock, publish)
        # every channel kind in use is exported from the start (at 0), so a
        # dashboard or alert never sees "no data" for "no failures yet"
        for recipient in routing.recipients.values():
            for channel in recipient.channels:
                kind = channel.name.split(":")[0]
                metrics.NOTIFICATIONS_SENT.labels(kind)
                metrics.NOTIFICATIONS_FAILED.labels(kind)
        metrics.NOTIFICATIONS_SENT.labels("email")
        metrics.NOTIFICATIONS_FAILED.labels("email")
        self._plan_what_an_older_ledger_lacks()

    # -- input -------------------------------------------------------------

    def on_customer(self, event: CustomerUpdated) -> None:
        with self.sessions.begin() as session:
            customer = session.get(Customer, event.customer_id) or Customer(
                customer_id=event.customer_id
            )
            customer.name, customer.owner = event.name, event.owner
            customer.segment, customer.region = event.segment, event.region
            session.add(customer)

    def on_health(self, change: AccountChange) -> int:
        """A change the worker put on the health topic (a band crossed): on to the
        feed's webhooks; returns how many deliveries are new."""
        with self.sessions.begin() as session:
            return self.feed.add(session, change, on_topic=True)

    def on_warning(self, record: WarningRecord) -> int:
        """Record the episode change and queue its notifications; returns how many are new.

        Dispatchers sharing a ledger can take the same record at once (a rebalance
        hands its partition over while the first is still on it): the second to
        commit breaks a unique key, and reads the ledger again, finding the
        episode and its notifications there."""
        try:
            return self._record(record)
        except IntegrityError:
            log.info("%s was recorded meanwhile (another dispatcher): again", record.warning_id)
            return self._record(record)

    def _record(self, record: WarningRecord) -> int:
        now = self.clock()
        with self.sessions.begin() as session:
            episode = session.get(Episode, record.warning_id)
            if episode is None:
                episode = Episode(
                    warning_id=record.warning_id,
                    customer_id=record.customer_id,
                    warning_type=record.warning_type,
                    opened_at=record.opened_at,
                    received_at=now,
                    status="open",
                )
                session.add(episode)
            if record.status in ("opened", "escalated") and episode.status == "open":
                episode.customer_name, episode.owner = record.customer_name, record.owner
                episode.segment, episode.severity = record.segment, record.severity
                episode.summary, episode.evidence = record.summary, dict(record.evidence)
                episode.action = record.recommended_action
                episode.churn_probability = record.churn_probability
                session.flush()
                open_task(session, episode, self.policy.owner(session, episode), self.settings, now)
            elif record.status == "resolved":
                if not episode.severity:  # never saw it open: keep what the record says
                    episode.severity, episode.summary = record.severity, record.summary
                    episode.customer_name, episode.owner = record.customer_name, record.owner
                    episode.segment = record.segment
                episode.status, episode.resolved_at = "resolved", record.at
                episode.summary = record.summary or episode.summary
                close_tasks(session, [episode.warning_id], "done", "resolved", BY_PIPELINE, now)
            session.flush()
            kind = {
                "opened": "opened",
                "resolved": "resolved",
                "escalated": f"escalated-{record.severity}",
            }[record.status]
            created = self._queue(session, episode, kind, now)
            if self.feed.enabled:
                change = f"warning_{kind.split('-')[0]}"
                self.feed.add(session, warning_change(episode, change, record.at))
            if kind == NotificationKind.RESOLVED:
                self._release_held(session, episode, now)
            return created

    def _release_held(self, session: Session, holder: Episode, now: datetime) -> None:
        """The holding episode closed: what it held back (still open) goes out now."""
        for held in self.policy.held(session, holder):
            if self.policy.open_of(
                session,
                held.customer_id,
                [t for t in self.routing.held_by(held.warning_type) if t != holder.warning_type],  # type: ignore[arg-type]
            ):
                continue  # another holder is still open
            for note in session.scalars(
                select(Notification).where(
                    Notification.warning_id == held.warning_id,
                    Notification.status == "inhibited",
                )
            ):
                note.status, note.due_at = "pending", now  # the stages judge it again

    def _queue(self, session: Session, episode: Episode, kind: str, now: datetime) -> int:
        created = 0
        held = self.policy.held(session, episode) if kind != NotificationKind.RESOLVED else []
        for name, recipient in self.policy.recipients(session, episode):
            for channel in recipient.channels:
                if kind == NotificationKind.RESOLVED:
                    told = session.scalar(
                        select(Notification.id).where(
                            Notification.warning_id == episode.warning_id,
                            Notification.recipient == name,
                            Notification.channel == channel.name,
                            Notification.kind.in_(TELLS_OPEN),
                            Notification.status == "sent",
                        )
                    )
                    if told is None:
                        continue  # nobody heard of it here: no news in its end either
                key = _key(episode, kind, name, channel)
                if session.scalar(select(Notification.id).where(Notification.dedup_key == key)):
                    continue  # a redelivered record: already queued
                self._add(session, episode, kind, key, name, recipient, channel, now, held)
                created += 1
        return created

    def _add(
        self,
        session: Session,
        episode: Episode,
        kind: str,
        key: str,
        name: str,
        recipient: Recipient,
        channel: Channel,
        now: datetime,
        held: list[Episode],
    ) -> None:
        sid = short_id(session, key)
        message = episode_message(
            episode,
            kind.split("-")[0],
            recipient.language,
            sid,
            held,
            page_link(self.base_url, episode.customer_id),
            self.links.links(episode.warning_id, name),
        )
        queue(session, sid, key, name, channel, kind.split("-")[0], message, now, episode)
        if kind != NotificationKind.RESOLVED and session.get(DigestDue, name) is None:
            due = self.policy.next_digest(recipient, now, after_today=False)
            session.add(DigestDue(recipient=name, due_at=due))

    # -- time-driven -------------------------------------------------------

    def remind(self) -> int:
        """Queue the reminders that are due (planned when a notice was sent or snoozed)."""
        now = self.clock()
        created = 0
        with self.sessions.begin() as session:
            due = session.scalars(
                select(ReminderDue)
                .where(ReminderDue.due_at <= now)
                .order_by(ReminderDue.due_at)
                .with_for_update(skip_locked=True)  # (another dispatcher's: theirs)
            )
            for plan in list(due):
                session.delete(plan)
                episode = session.get(Episode, plan.warning_id)
                if episode is None or episode.status != "open":
                    continue
                triple = (
                    Notification.warning_id == plan.warning_id,
                    Notification.recipient == plan.recipient,
                    Notification.channel == plan.channel,
                )
                waiting = select(Notification.id).where(
                    *triple, Notification.kind.in_(TELLS_OPEN), Notification.status == "pending"
                )
                if session.scalar(waiting) is not None:
                    continue  # news of it is on its way; sending it plans the next reminder
                recipient = self.routing.recipient(plan.recipient)
                channel = next((c for c in recipient.channels if c.name == plan.channel), None)
                if channel is None:
                    continue  # the channel left the routing file
                count = session.scalar(
                    select(func.count(Notification.id)).where(
                        *triple, Notification.kind == NotificationKind.REMINDER
                    )
                )
                kind = f"reminder-{int(count or 0) + 1}"
                key = _key(episode, kind, plan.recipient, channel)
                held = self.policy.held(session, episode)
                self._add(
                    session, episode, kind, key, plan.recipient, recipient, channel, now, held
                )
                created += 1
        return created

    def tasks_due(self) -> int:
        """Remind owners of their overdue tasks, then tell their managers (once each)."""
        now = self.clock()
        created = 0
        with self.sessions.begin() as session:
            due = session.scalars(
                select(Task)
                .where(Task.state == "open", Task.check_at <= now)
                .order_by(Task.check_at)
                .with_for_update(skip_locked=True)  # (another dispatcher's: theirs)
            )
            for task in list(due):
                episode = session.get(Episode, task.warning_id)
                if episode is None or episode.status != "open":
                    task.check_at = None  # its resolution closes it
                    continue
                ends = [
                    s.until
                    for s in active_snoozes(session, task.customer_id, now)
                    if s.warning_type in (None, episode.warning_type)
                ]
                if ends:
                    task.check_at = max(ends)  # snoozed: looked at again when it ends
                    continue
                if task.reminded_at is None:
                    kind, name = NotificationKind.TASK_OVERDUE, task.owner or self.routing.fallback
                    task.reminded_at = now
                    task.check_at = now + timedelta(days=self.settings.task_escalate_days)
                else:
                    kind, manager = (
                        NotificationKind.TASK_ESCALATED,
                        self.routing.manager_of(task.owner),
                    )
                    task.escalated_at, task.check_at = now, None
                    if manager is None:
                        continue  # no manager in the routing file: the owner was told
                    name = manager
                recipient = self.routing.recipient(name)
                for channel in recipient.channels:
                    key = f"task|{task.id}|{kind}|{name}|{channel.name}"
                    if session.scalar(select(Notification.id).where(Notification.dedup_key == key)):
                        continue
                    sid = short_id(session, key)
                    actions = (
                        self.links.links(episode.warning_id, name) if name == task.owner else {}
                    )
                    message = task_message(
                        task,
                        episode,
                        kind,
                        recipient.language,
                        sid,
                        page_link(self.base_url, episode.customer_id),
                        actions,
                    )
                    queue(session, sid, key, name, channel, kind, message, now, episode, task.id)
                    created += 1
        return created

    def digests(self) -> int:
        """Each recipient's daily digest of their open warnings, when it is due."""
        now = self.clock()
        created = 0
        with self.sessions.begin() as session:
            due = session.scalars(
                select(DigestDue)
                .where(DigestDue.due_at <= now)
                .with_for_update(skip_locked=True)  # (another dispatcher's: theirs)
            )
            for plan in list(due):
                name = plan.recipient
                recipient = self.routing.recipient(name)
                local = now.astimezone(ZoneInfo(recipient.window.timezone))
                if local.hour < self.settings.digest_hour:  # a day missed: today's, at its hour
                    plan.due_at = self.policy.next_digest(recipient, now, after_today=False)
                    continue
                told = select(Notification.warning_id).where(
                    Notification.recipient == name,
                    Notification.status.in_(["sent", "pending", "capped"]),
                )
                episodes = list(  # (no DISTINCT: PostgreSQL cannot compare JSON columns)
                    session.scalars(
                        select(Episode)
                        .where(Episode.status == "open", Episode.warning_id.in_(told))
                        .order_by(Episode.warning_id)
                    )
                )
                if not episodes:
                    session.delete(plan)  # planned again with their next warning
                    continue
                plan.due_at = self.policy.next_digest(recipient, now, after_today=True)
                for channel in recipient.channels:
                    key = f"digest|{local.date().isoformat()}|{name}|{channel.name}"
                    if session.scalar(select(Notification.id).where(Notification.dedup_key == key)):
                        continue
                    sid = short_id(session, key)
                    message = digest_message(
                        episodes,
                        recipient.language,
                        sid,
                        page_link(self.base_url),
                        overdue_tasks(session, name, now),
                    )
                    queue(session, sid, key, name, channel, NotificationKind.DIGEST, message, now)
                    created += 1
        return created

    def _plan_what_an_older_ledger_lacks(self) -> None:
        """A ledger from before reminders and digests were planned holds no plan: plan
        them once from what was sent, so an upgrade does not silence open episodes."""
        with self.sessions.begin() as session:
            if session.scalar(select(ReminderDue.warning_id).limit(1)) is not None:
                return
            if session.scalar(select(DigestDue.recipient).limit(1)) is not None:
                return
            sent = (
                select(Notification)
                .join(Episode, Episode.warning_id == Notification.warning_id)
                .where(
                    Episode.status == "open",
                    Notification.kind.in_(TELLS_OPEN),
                    Notification.status == "sent",
                )
                .order_by(Notification.id)
            )
            latest = {(n.warning_id, n.recipient, n.channel): n for n in session.scalars(sent)}
            now = self.clock()
            for note in latest.values():
                episode = session.get(Episode, note.warning_id)
                sent_at = note.sent_at or now
                schedule_reminder(session, note, sent_at + self.outbox.cooldown(episode))
            for name in sorted({note.recipient for note in latest.values()}):
                due = self.policy.next_digest(self.routing.recipient(name), now, after_today=False)
                session.add(DigestDue(recipient=name, due_at=due))

    def deliver_due(self, limit: int = 200) -> int:
        """Send pending notifications whose time has come (see :class:`Outbox`)."""
        return self.outbox.deliver_due(limit)

    def feed_tasks(self, limit: int = 500) -> int:
        """Tell the account feed of the tasks that opened or closed since it last
        heard (closed here, in the web inbox or from the CLI)."""
        with self.sessions.begin() as session:
            due = list(
                session.scalars(
                    select(Task)
                    .where(Task.feed_due.is_(True))
                    .order_by(Task.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            for task in due:
                task.feed_due = False
                episode = session.get(Episode, task.warning_id)
                if self.feed.enabled and episode is not None:
                    self.feed.add(session, task_change(task, episode, self.clock()))
            return len(due)

    def tick(self) -> None:
        self.remind()
        self.tasks_due()
        self.feed_tasks()
        self.feed.deliver_due()
        self.digests()
        self.deliver_due()


def overdue_tasks(session: Session, owner: str, now: datetime) -> list[tuple[Task, Episode]]:
    """The owner's open tasks past their due time, each with its warning."""
    query = (
        select(Task, Episode)
        .join(Episode, Episode.warning_id == Task.warning_id)
        .where(Task.owner == owner, Task.state == "open", Task.due_at < now)
        .order_by(Task.due_at, Task.id)
    )
    return [(task, episode) for task, episode in session.execute(query)]


def queue(
    session: Session,
    sid: str,
    key: str,
    name: str,
    channel: Channel,
    kind: str,
    message: Message,
    now: datetime,
    episode: Episode | None = None,
    task_id: int | None = None,
) -> Notification:
    """Put one notification in the outbox, due now: whether and when it goes out is
    the delivery stages' to say, when it is due (``episode``: what it is about, none
    for a digest; ``task_id``: the task a task notice is about)."""
    note = Notification(
        short_id=sid,
        dedup_key=key,
        warning_id=episode.warning_id if episode is not None else None,
        task_id=task_id,
        customer_id=episode.customer_id if episode is not None else "",
        recipient=name,
        channel=channel.name,
        kind=kind,
        status="pending",
        subject=message.subject,
        body_text=message.text,
        body_markdown=message.markdown,
        created_at=now,
        due_at=now,
    )
    session.add(note)
    return note


def make_dispatcher(settings: Settings, **kwargs: Any) -> Dispatcher:
    return Dispatcher(
        settings.alerts,
        load_routing(settings.alerts.routing),
        open_ledger(settings.alerts.ledger_url),
        base_url=settings.web.base_url,
        links=action_links(settings),
        **kwargs,
    )


def action_links(settings: Settings) -> ActionLinks:
    """The one-click links of these settings (said once when they are off)."""
    web = settings.web
    links = ActionLinks(web.link_secret.get_secret_value(), web.base_url, web.link_days)
    if not links.enabled:
        log.info(
            "no one-click links in notifications: they need web.base_url and "
            "web.link_secret (CHURNWATCH_WEB__LINK_SECRET)"
        )
    return links


def run_dispatcher(settings: Settings, stop: threading.Event, dispatcher: Dispatcher) -> None:
    """Consume warnings, customers and the worker's band changes until ``stop``;
    deliver between polls (the account feed's own changes to the health topic too)."""
    from kafka import KafkaConsumer, KafkaProducer

    warnings_topic = settings.topic(Topic.WARNINGS)
    customers_topic = settings.topic(Topic.CUSTOMERS)
    health_topic = settings.topic(Topic.HEALTH)
    producer = KafkaProducer(
        client_id="churnwatch-account-feed",
        acks="all",
        max_block_ms=10_000,
        **settings.kafka_client_options(),
    )

    def publish(key: bytes, value: bytes) -> None:
        producer.send(health_topic, key=key, value=value).get(timeout=30)

    dispatcher.feed.publish = publish
    consumer = subscribed(
        KafkaConsumer(
            group_id=settings.alerts.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **settings.kafka_group_options(),
            **settings.kafka_consumer_options(),
        ),
        [warnings_topic, customers_topic, health_topic],
    )
    kafka = ThroughOutages(consumer, "alert dispatcher")
    try:
        while not stop.is_set():
            batches = kafka.poll(timeout_ms=int(settings.alerts.poll_seconds * 1000))
            for messages in batches.values():
                for message in messages:
                    _consume(dispatcher, message, warnings_topic, health_topic)
            if batches:
                kafka.commit()  # after the ledger has them: at least once, deduplicated
            dispatcher.tick()  # the outbox delivers while Kafka is away, too
    finally:
        consumer.close()
        producer.close(timeout=10)


def _consume(dispatcher: Dispatcher, message: Any, warnings_topic: str, health_topic: str) -> None:
    try:
        if message.topic == warnings_topic:
            dispatcher.on_warning(WarningRecord.model_validate_json(message.value))
        elif message.topic == health_topic:
            change = AccountChange.model_validate_json(message.value)
            if change.change == "band_changed":  # (the rest are this feed's own)
                dispatcher.on_health(change)
        else:
            event = decode_message(message.value, message.key)
            if isinstance(event, CustomerUpdated):
                dispatcher.on_customer(event)
    except Exception as exc:  # the worker validated these; skip and say so, never die
        log.error("skipped %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc)
