"""churnwatch's topics: their names, and creating them (all with the same partition count).

Run: ``churnwatch topics create``. The demo, the worker and the simulator call
:func:`ensure_topics` at start, so a fresh broker needs no manual step.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from churnwatch.core.settings import Settings

log = logging.getLogger(__name__)


class Topic(StrEnum):
    """Logical topic names; the full name is ``<prefix>.<value>``."""

    ORDERS = "orders.v1"
    PAYMENTS = "payments.v1"
    COMPLAINTS = "complaints.v1"
    ENGAGEMENT = "engagement.v1"
    CUSTOMERS = "customers.v1"
    WARNINGS = "warnings.v1"
    DEAD_LETTERS = "deadletters.v1"


class Table(StrEnum):
    """The worker's tables; Faust keeps each in a changelog topic (:func:`changelog_topic`)."""

    CUSTOMER_STATE = "customer_state"
    SWEEP_PROGRESS = "sweep_progress"


def changelog_topic(settings: Settings, table: Table) -> str:
    """The topic a worker table is changelogged to, named as Faust names it
    (``<app_id>-<table>-changelog``); whoever reads a table's changelog (the web
    inbox, the consistency check, the bench) takes the name from here."""
    return f"{settings.worker.app_id}-{table.value}-changelog"


#: Topics the worker consumes as customer events.
EVENT_TOPICS = (Topic.ORDERS, Topic.PAYMENTS, Topic.COMPLAINTS, Topic.ENGAGEMENT, Topic.CUSTOMERS)


class TopicsError(RuntimeError):
    """Topics could not be created or have the wrong shape."""


def admin_client(settings: Settings, timeout: float = 20.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(
                client_id="churnwatch-admin",
                request_timeout_ms=15000,
                **settings.kafka_client_options(),
            )
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise TopicsError(
                    f"no Kafka broker reachable at {settings.kafka.bootstrap_servers}; start one "
                    "with `churnwatch broker` or set kafka.bootstrap_servers"
                ) from exc
            time.sleep(0.5)


def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; return the names created."""
    wanted = {settings.topic(t): t for t in Topic}
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=settings.kafka.partitions,
                replication_factor=settings.kafka.replication_factor,
                topic_configs=({"cleanup.policy": "compact"} if logical is Topic.CUSTOMERS else {}),
            )
            for name, logical in wanted.items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race
            except KafkaError as exc:
                raise TopicsError(f"could not create topics: {exc}") from exc
        _check_partitions(admin, settings, list(wanted))
        return [t.name for t in missing]
    finally:
        admin.close()


def _check_partitions(admin: KafkaAdminClient, settings: Settings, names: list[str]) -> None:
    for meta in admin.describe_topics(names):
        count = len(meta.get("partitions") or [])
        if count and count != settings.kafka.partitions:
            raise TopicsError(
                f"topic {meta['topic']} has {count} partitions, settings say "
                f"{settings.kafka.partitions}: every churnwatch topic must have the same count "
                "(customers are co-partitioned across topics)"
            )


def end_offsets(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end (its last offset + 1), as the partition's data has it.

    Asked as ``ListOffsets(latest)`` and checked by a fetch: the embedded Tansu
    broker answers ``ListOffsets`` with the base offset of the partition's last
    record batch + 1, short of the end by the batch's other records (a batch
    of 5 at offsets 2-6 is answered 3), while a fetch response carries the true
    high watermark. Apache Kafka's two answers agree.
    """
    if not tps:
        return {}
    probe = KafkaConsumer(
        group_id=None, enable_auto_commit=False, **settings.kafka_client_options()
    )
    try:
        reported: dict[TopicPartition, int] = {
            tp: int(end or 0) for tp, end in probe.end_offsets(tps).items()
        }
        fetch = [tp for tp in tps if reported.get(tp, 0) > 0]
        if fetch:
            probe.assign(fetch)
            for tp in fetch:
                probe.seek(tp, reported[tp] - 1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(probe.highwater(tp) is None for tp in fetch):
                probe.poll(timeout_ms=200, max_records=1)
        fetched = {tp: probe.highwater(tp) or 0 for tp in fetch}
        return {tp: max(reported.get(tp, 0), fetched.get(tp, 0)) for tp in tps}
    finally:
        probe.close()


def committed_offsets(
    settings: Settings, group_id: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The offset each partition's next read starts from for ``group_id`` (None: never
    committed). Asked without joining the group."""
    probe = KafkaConsumer(
        group_id=group_id, enable_auto_commit=False, **settings.kafka_client_options()
    )
    try:
        return {tp: probe.committed(tp) for tp in tps}
    finally:
        probe.close()
