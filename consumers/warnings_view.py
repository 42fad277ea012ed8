"""Print warnings readably as they arrive.

Run: ``churnwatch warnings tail [--from-beginning]``. Reads every partition
of the warnings topic without joining a consumer group (nothing to commit,
so it starts at once and never disturbs other readers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import WarningRecord

STATUS_MARK = {"opened": "OPEN ", "resolved": "CLOSE", "escalated": "WORSE"}


def format_warning(w: WarningRecord) -> str:
    """One line a salesperson can read, plus the recommended action when opened."""
    who = f"{w.customer_id} {w.customer_name}".strip()
    owner = f" [owner {w.owner}]" if w.owner else ""
    line = (
        f"{w.at.date().isoformat()} {STATUS_MARK[w.status]} {w.warning_type:<18} "
        f"{w.severity:<8} {who}{owner}: {w.summary}"
    )
    if w.status == "opened":
        line += f"\n{'':>17}-> {w.recommended_action}"
    return line


def follow(
    settings: Settings,
    topic: Topic,
    on_message: Callable[[bytes], None],
    stop: threading.Event,
    from_beginning: bool = True,
) -> None:
    """Call ``on_message`` with every payload of ``topic`` until ``stop`` is set."""
    consumer = KafkaConsumer(
        client_id="churnwatch-view",
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_consumer_options(),
    )
    try:
        name = settings.topic(topic)
        partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    on_message(message.value)
    finally:
        consumer.close()


def tail_warnings(
    settings: Settings,
    stop: threading.Event,
    on_warning: Callable[[WarningRecord], None],
    from_beginning: bool = True,
) -> None:
    """Decode each warning record and hand it to ``on_warning``."""

    def on_message(payload: bytes) -> None:
        try:
            on_warning(WarningRecord.model_validate_json(payload))
        except ValidationError:
            pass  # not ours to judge: the view shows what it can read

    follow(settings, Topic.WARNINGS, on_message, stop, from_beginning)
