"""What the demo counts: the warnings its view saw, what the worker and the
dispatcher have done (from their metrics, the broker and the ledger), and the
summary that compares the warnings with the simulator's truth."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from churnwatch.consumers.alerts.ledger import due_notifications, notifications_by_status
from churnwatch.consumers.alerts.tasks import task_counts
from churnwatch.core.inbox import LocalInbox
from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic, end_offsets
from churnwatch.pipeline.events import WarningRecord
from churnwatch.pipeline.health import health_view
from churnwatch.pipeline.state import StateBlock
from churnwatch.producers.produce import ProduceStats
from churnwatch.producers.simulator import GroundTruth


@dataclass
class Tally:
    """What the warnings view has seen."""

    opened_by_type: Counter[str] = field(default_factory=Counter)
    resolved: int = 0
    opened_for: dict[str, list[tuple[str, datetime]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seen_ids: set[tuple[str, str, str]] = field(default_factory=set)
    escalated: int = 0
    last_change: float = field(default_factory=time.monotonic)

    def add(self, w: WarningRecord) -> None:
        key = (w.warning_id, w.status, w.severity if w.status == "escalated" else "")
        if key in self.seen_ids:
            return  # redelivered after a worker restart: the same episode
        self.seen_ids.add(key)
        self.last_change = time.monotonic()
        if w.status == "opened":
            self.opened_by_type[w.warning_type] += 1
            self.opened_for[w.customer_id].append((w.warning_type, w.opened_at))
        elif w.status == "escalated":
            self.escalated += 1
        else:
            self.resolved += 1


def events_processed(metrics_port: int) -> int | None:
    """Messages the worker has consumed from the event topics, from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "churnwatch_events_consumed":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return int(total)


def warnings_not_taken(settings: Settings) -> int:
    """Warning records the alert dispatcher has not yet committed (taken into its ledger)."""
    consumer = KafkaConsumer(
        group_id=settings.alerts.group_id,
        enable_auto_commit=False,
        **settings.kafka_consumer_options(),
    )
    try:
        name = settings.topic(Topic.WARNINGS)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        ends = end_offsets(settings, tps)
        return sum(max(0, end - (consumer.committed(tp) or 0)) for tp, end in ends.items())
    finally:
        consumer.close()


def dead_letter_count(settings: Settings) -> int:
    consumer = KafkaConsumer(group_id=None, **settings.kafka_consumer_options())
    try:
        name = settings.topic(Topic.DEAD_LETTERS)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        return sum(end_offsets(settings, tps).values())
    finally:
        consumer.close()


def summarise(
    truth: list[GroundTruth], tally: Tally, stats: ProduceStats, processed: int, dead: int
) -> dict[str, Any]:
    """The demo summary: how well the warnings match the simulator's truth.

    A churner counts as warned when a warning opened on or after the onset of
    its change in behaviour; a steady customer (never churns, including the
    seasonal and one-off look-alikes) counts as warned by any warning at all.
    """
    churners = [t for t in truth if t.churned]
    steady = [t for t in truth if not t.churned]

    def warned_after_onset(t: GroundTruth) -> bool:
        onset = t.onset
        return any(onset is not None and at >= onset for _, at in tally.opened_for[t.customer_id])

    by_profile: dict[str, dict[str, int]] = {}
    for t in truth:
        row = by_profile.setdefault(t.profile, {"customers": 0, "warned": 0})
        row["customers"] += 1
        warned = warned_after_onset(t) if t.churned else bool(tally.opened_for[t.customer_id])
        row["warned"] += warned
    return {
        "events_produced": stats.sent,
        "events_malformed_sent": stats.malformed,
        "events_processed": processed,
        "dead_letters": dead,
        "warnings": dict(sorted(tally.opened_by_type.items())),
        "warnings_resolved": tally.resolved,
        "warnings_escalated": tally.escalated,
        "churners_total": len(churners),
        "churners_warned": sum(warned_after_onset(t) for t in churners),
        "steady_total": len(steady),
        "steady_warned": sum(bool(tally.opened_for[t.customer_id]) for t in steady),
        "by_profile": dict(sorted(by_profile.items())),
    }


def health_summary(truth: list[GroundTruth], states: StateBlock) -> dict[str, Any]:
    """The mean health score the worker holds at the end (pipeline.health) of the
    customers who churn and of the steady ones: they should be well apart."""
    scores: dict[bool, list[int]] = {True: [], False: []}
    for t in truth:
        view = health_view(states, states.rows[t.customer_id]) if t.customer_id in states else None
        if view is not None:
            scores[t.churned].append(view["score"])

    def mean(values: list[int]) -> float | None:
        return round(sum(values) / len(values), 1) if values else None

    return {
        "health_score": {
            "churners": mean(scores[True]),
            "steady": mean(scores[False]),
            "customers_scored": len(scores[True]) + len(scores[False]),
        }
    }


def notification_summary(inbox: LocalInbox, ledger: sessionmaker[Session]) -> dict[str, Any]:
    """What reached the demo's inbox, and the ledger's account of every notification."""
    subjects = Counter(str(m["Subject"]) for m in inbox.received())
    with ledger() as session:
        by_status = notifications_by_status(session)
        tasks = task_counts(session, datetime.now(UTC)).values()
    return {
        "notifications_sent": sum(subjects.values()),
        "duplicate_notifications": sum(n - 1 for n in subjects.values() if n > 1),
        "notifications_by_status": by_status,
        "notified_owners": len({str(m["To"]) for m in inbox.received()}),
        # a task per opened or escalated warning; done: its warning resolved (or an
        # outcome was recorded); the ones an escalation replaced are not counted
        "tasks_open": sum(c.open for c in tasks),
        "tasks_done": sum(c.done for c in tasks),
    }


def outbox_due(ledger: sessionmaker[Session]) -> int:
    """Notifications due now and not yet delivered (not those waiting for a window)."""
    with ledger() as session:
        return due_notifications(session, datetime.now(UTC))
