"""Archive every customer event to Parquet, partitioned by event date.

Run: ``churnwatch archive`` (Ctrl-C flushes and stops). The archive is the
history the batch jobs (retraining, consistency checks) read back with
:func:`read_archive`. Layout: ``<archive.path>/<topic>/date=YYYY-MM-DD/*.parquet``
with columns ``event_id, customer_id, occurred_at, type, payload`` (the
event's JSON, so any record type round-trips).

At-least-once and idempotent: offsets are committed only after the files are
written, and an event already in its date's files is not written again, so a
redelivery never stores an event twice. The buffer is bounded: it is flushed
every ``archive.flush_events`` events or ``archive.flush_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import pandas as pd
from kafka import KafkaConsumer

from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS, ThroughOutages, subscribed
from churnwatch.pipeline import metrics
from churnwatch.pipeline.events import (
    CustomerEvent,
    InvalidEvent,
    decode_event,
    decode_message,
    encode_event,
)

log = logging.getLogger(__name__)

COLUMNS = ["event_id", "customer_id", "occurred_at", "type", "payload"]


@dataclass
class ArchiveStats:
    archived: int = 0
    duplicates: int = 0
    invalid: int = 0
    files: int = 0
    bytes: int = 0


@dataclass
class Archive:
    """Writes batches of events into date folders, skipping ids already stored."""

    root: Path
    _known: dict[Path, set[str]] = field(default_factory=dict)

    def _ids_in(self, folder: Path) -> set[str]:
        known = self._known.get(folder)
        if known is None:
            known = set()
            for part in sorted(folder.glob("*.parquet")):
                known.update(pd.read_parquet(part, columns=["event_id"])["event_id"])
            self._known[folder] = known
        return known

    def write(self, topic: str, events: list[CustomerEvent], stats: ArchiveStats) -> None:
        by_folder: dict[Path, list[CustomerEvent]] = defaultdict(list)
        for event in events:
            day = event.occurred_at.astimezone(UTC).date().isoformat()
            by_folder[self.root / topic / f"date={day}"].append(event)
        for folder, batch in sorted(by_folder.items()):
            known = self._ids_in(folder)
            fresh: dict[str, CustomerEvent] = {}
            for event in batch:
                if event.event_id in known or event.event_id in fresh:
                    stats.duplicates += 1
                else:
                    fresh[event.event_id] = event
            if not fresh:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(
                [
                    {
                        "event_id": e.event_id,
                        "customer_id": e.customer_id,
                        "occurred_at": e.occurred_at,
                        "type": e.type,
                        "payload": encode_event(e).decode("utf-8"),
                    }
                    for e in fresh.values()
                ],
                columns=COLUMNS,
            )
            path = folder / f"part-{time.time_ns()}.parquet"
            tmp = path.with_suffix(".tmp")
            frame.to_parquet(tmp, index=False)
            tmp.rename(path)  # readers never see half a file
            known.update(fresh)
            size = path.stat().st_size
            stats.archived += len(fresh)
            stats.files += 1
            stats.bytes += size
            metrics.ARCHIVE_EVENTS.inc(len(fresh))
            metrics.ARCHIVE_FILES.inc()
            metrics.ARCHIVE_BYTES.inc(size)


def run_archiver(
    settings: Settings,
    stop: threading.Event,
    on_flush: Callable[[ArchiveStats], None] | None = None,
) -> ArchiveStats:
    """Consume the event topics into the archive until ``stop`` is set; flush at the end."""
    a = settings.archive
    archive = Archive(Path(a.path))
    stats = ArchiveStats()
    names = {settings.topic(t): t.value.split(".")[0] for t in EVENT_TOPICS}
    consumer = subscribed(
        KafkaConsumer(
            group_id=a.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="churnwatch-archiver",
            **settings.kafka_group_options(),
            **settings.kafka_consumer_options(),
        ),
        list(names),
    )
    kafka = ThroughOutages(consumer, "archiver")
    buffer: dict[str, list[CustomerEvent]] = defaultdict(list)
    buffered = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal buffered, last_flush
        for topic, events in buffer.items():
            archive.write(topic, events, stats)
        buffer.clear()
        buffered = 0
        last_flush = time.monotonic()
        kafka.commit()  # only after the files are written
        if on_flush is not None:
            on_flush(stats)

    try:
        while not stop.is_set():
            for batch in kafka.poll(timeout_ms=500, max_records=a.flush_events).values():
                for message in batch:
                    try:
                        event = decode_message(message.value, message.key)
                    except InvalidEvent:
                        stats.invalid += 1  # the worker sends it to the dead letters
                        continue
                    buffer[names[message.topic]].append(event)
                    buffered += 1
            if buffered >= a.flush_events or (
                buffered and time.monotonic() - last_flush >= a.flush_seconds
            ):
                flush()
        flush()
    finally:
        consumer.close(autocommit=False)
    return stats


def read_archive(root: str | Path, topics: list[str] | None = None) -> list[CustomerEvent]:
    """Every archived event (optionally of some topics), in event-time order."""
    events: list[CustomerEvent] = []
    for part in sorted(Path(root).glob("*/date=*/*.parquet")):
        if topics is not None and part.parent.parent.name not in topics:
            continue
        for payload in pd.read_parquet(part, columns=["payload"])["payload"]:
            events.append(decode_event(payload.encode("utf-8")))
    events.sort(key=lambda e: e.occurred_at)
    return events
