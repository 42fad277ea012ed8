"""Create churnwatch's topics (all with the same partition count) if they are missing.

Run: ``churnwatch topics create``. The demo, the worker and the simulator call
:func:`ensure_topics` at start, so a fresh broker needs no manual step.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from churnwatch.settings import Settings
from pipeline.events import Topic

log = logging.getLogger(__name__)


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
