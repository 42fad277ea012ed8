"""Replay a real export (CSV or Parquet) to Kafka in event-time order.

Run: ``churnwatch replay PATH --mapping configs/mappings/online_retail.yaml``
(``--speedup X`` to stream at X times real speed; as fast as possible by
default). Rows that do not map to a valid event go to the dead-letter topic
with the reason, so nothing is silently lost.
"""

from __future__ import annotations

import json

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import TOPIC_OF_TYPE, CustomerEvent, dead_letter_for, encode_event
from churnwatch.producers.loading import Rejected
from churnwatch.producers.produce import make_producer
from churnwatch.producers.simulator import SimEvent


def as_messages(events: list[CustomerEvent]) -> list[SimEvent]:
    """Mapped events as messages for :func:`producers.produce.produce`."""
    return [
        SimEvent(e.occurred_at, TOPIC_OF_TYPE[e.type], e.customer_id, encode_event(e))
        for e in events
    ]


def send_rejected(settings: Settings, source: str, rejected: list[Rejected]) -> None:
    """Report rows that could not be mapped on the dead-letter topic."""
    if not rejected:
        return
    producer = make_producer(settings)
    try:
        for r in rejected:
            letter = dead_letter_for(
                f"replay:{source}",
                -1,
                r.row_number,
                None,
                json.dumps(r.row, default=str).encode("utf-8"),
                f"{r.event_type}: {r.error}",
            )
            producer.send(settings.topic(Topic.DEAD_LETTERS), value=encode_event(letter))
    finally:
        producer.flush(timeout=30)
        producer.close(timeout=10)
