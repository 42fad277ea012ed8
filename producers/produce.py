"""Produce prepared events to Kafka in event-time order (kafka-python).

Used by ``churnwatch simulate``; follows the Kafka client examples: a
delivery callback, bounded buffers, ``flush()`` on exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaProducer

from churnwatch.core.settings import Settings
from churnwatch.producers.simulator import SimEvent

log = logging.getLogger(__name__)


@dataclass
class ProduceStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    malformed: int = 0
    last_event_time: str = ""


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(
        client_id="churnwatch-producer",
        acks="all",
        linger_ms=20,
        batch_size=64 * 1024,
        max_block_ms=30_000,
        **settings.kafka_client_options(),
    )


def produce(
    settings: Settings,
    paced: Iterable[tuple[SimEvent, float]],
    stop: threading.Event | None = None,
    on_progress: Callable[[ProduceStats], None] | None = None,
    stats: ProduceStats | None = None,
) -> ProduceStats:
    """Send each event when its wall-clock second (from the start) is due.

    ``stats`` (optional) is updated as it goes, for callers that watch progress.
    """
    stats = stats if stats is not None else ProduceStats()
    lock = threading.Lock()

    def delivered(_metadata: object) -> None:
        with lock:
            stats.delivered += 1

    def failed(exc: BaseException) -> None:
        with lock:
            stats.failed += 1
        log.error("delivery failed: %s", exc)

    producer = make_producer(settings)
    started = time.monotonic()
    last_report = started
    try:
        for event, due in paced:
            if stop is not None and stop.is_set():
                break
            wait = started + due - time.monotonic()
            if wait > 0:
                if stop is not None:
                    if stop.wait(wait):
                        break
                else:
                    time.sleep(wait)
            future = producer.send(
                settings.topic(event.topic), key=event.key.encode(), value=event.payload
            )
            future.add_callback(delivered)
            future.add_errback(failed)
            stats.sent += 1
            stats.malformed += event.malformed
            stats.last_event_time = event.ts.date().isoformat()
            if on_progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                on_progress(stats)
    finally:
        producer.flush(timeout=30)
        producer.close(timeout=10)
    if on_progress is not None:
        on_progress(stats)
    return stats
