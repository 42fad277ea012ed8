"""churnwatch's topics: their names, and creating them (all with the same partition count).

Run: ``churnwatch topics create``. The demo, the worker and the simulator call
:func:`ensure_topics` at start, so a fresh broker needs no manual step.
"""

from __future__ import annotations

import logging
import ssl
import time
from enum import StrEnum
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)

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
    #: the account feed for a CRM (``pipeline.events.AccountChange``)
    HEALTH = "health.v1"


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


class _CreateFailed(TopicsError):
    """The broker refused to create them (maybe only for now)."""


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


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created.

    A cluster that has just started may not yet know its own controller (Apache
    Kafka answers ``UnknownBrokerId`` for a few seconds); such errors are retried,
    with fresh metadata, until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _ensure_topics(settings)
        except _CreateFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _ensure_topics(settings: Settings) -> list[str]:
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
                raise _CreateFailed(f"could not create topics: {exc}") from exc
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
        group_id=None, enable_auto_commit=False, **settings.kafka_consumer_options()
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


def subscribed(consumer: KafkaConsumer, topics: list[str], timeout: float = 30.0) -> KafkaConsumer:
    """``consumer`` (of a group) subscribed to ``topics`` once its metadata knows every
    one of them. A member that joins before (topics just created, a node of a
    cluster not told yet) is assigned none of their partitions, and kafka-python
    looks again only when its metadata ages (``metadata_max_age_ms``): seen on a
    three-node Apache Kafka, an archiver that archived nothing for minutes."""
    deadline = time.monotonic() + timeout
    missing = list(topics)
    while missing and time.monotonic() < deadline:
        missing = [topic for topic in missing if not consumer.partitions_for_topic(topic)]
        if missing:
            time.sleep(0.5)
    if missing:
        log.warning("subscribing before the broker lists %s (not created yet?)", missing)
    consumer.subscribe(topics)
    return consumer


def require_transactions(settings: Settings) -> None:
    """Raise :class:`TopicsError` unless the broker runs Kafka transactions (what
    ``worker.processing_guarantee: exactly_once`` needs). Probed as the worker's
    producers will use them (aiokafka): an idempotent producer started, and an
    empty transaction with the worker group's offsets begun and aborted."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as AIOKafkaError

    servers = settings.kafka.bootstrap_servers
    # kafka-python's options, as aiokafka names them
    options = settings.kafka_client_options()
    options["bootstrap_servers"] = servers
    if cafile := options.pop("ssl_cafile", None):
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)

    async def probe() -> None:
        idempotent = AIOKafkaProducer(enable_idempotence=True, acks="all", **options)
        transactional = AIOKafkaProducer(
            transactional_id=f"{settings.worker.app_id}-transactions-probe", **options
        )
        try:
            await idempotent.start()
            await transactional.start()
            await transactional.begin_transaction()
            await transactional.abort_transaction()
        finally:
            await idempotent.stop()
            await transactional.stop()

    try:
        asyncio.run(asyncio.wait_for(probe(), 30))
    except (AIOKafkaError, TimeoutError) as exc:
        raise TopicsError(
            "worker.processing_guarantee is exactly_once, and the broker at "
            f"{servers} runs no Kafka transactions ({exc!r}): use Apache Kafka (the "
            "embedded Tansu broker has none), or at_least_once"
        ) from exc


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


#: A commit refused because the group is rebalancing, or has moved on without this
#: member (kafka-python raises these as not retriable; a broker failover or a
#: coordinator move brings them): the partitions' next owner reads those messages
#: again, and this member's next commit, in the new generation, covers the rest.
_GROUP_MOVED = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


class ThroughOutages:
    """A kafka-python consumer loop's poll and commit, carried through a broker outage.

    kafka-python raises from ``poll`` while no broker of the group's coordinator
    answers (a whole cluster restarting, every node of it down for seconds), and
    from ``commit`` during a rebalance. A consumer that stores before it commits
    (the archiver's files, the dispatcher's ledger) loses nothing by waiting:
    retriable errors are logged once per outage and the loop goes on, a commit
    that failed is made good by the next one (a rebalance in between delivers
    those messages again, and the store skips what it has)."""

    def __init__(self, consumer: Any, what: str, pause: float = 1.0) -> None:
        self.consumer = consumer
        self.what = what
        self.pause = pause
        self.since: float | None = None

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
        try:
            batches: dict[Any, list[Any]] = self.consumer.poll(
                timeout_ms=timeout_ms, max_records=max_records
            )
        except KafkaError as exc:
            if not exc.retriable:
                raise
            self._down(exc)
            time.sleep(self.pause)
            return {}
        self._up()
        return batches

    def commit(self) -> bool:
        """Commit the consumed offsets; False (logged) when the broker refused for now."""
        try:
            self.consumer.commit()
        except KafkaError as exc:
            if not (exc.retriable or isinstance(exc, _GROUP_MOVED)):
                raise
            log.warning("%s: commit failed (%s); the next commit covers it", self.what, exc)
            return False
        return True

    def _down(self, exc: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: Kafka unreachable (%s); retrying until it is back", self.what, exc)

    def _up(self) -> None:
        if self.since is not None:
            log.warning(
                "%s: Kafka reachable again after %.1f s", self.what, time.monotonic() - self.since
            )
            self.since = None
