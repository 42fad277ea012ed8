"""`churnwatch archive`: every event once in Parquet by event date, even when delivered twice."""

from __future__ import annotations

import threading
import time

import pytest

from consumers.archiver import ArchiveStats, read_archive, run_archiver
from pipeline.events import decode_event
from producers.produce import produce
from producers.simulator import iter_paced, parse_start, simulate

pytestmark = pytest.mark.integration


def archive_until(settings, expected: int, timeout: float = 60) -> ArchiveStats:
    stop = threading.Event()
    result: list[ArchiveStats] = []

    def on_flush(stats: ArchiveStats) -> None:
        if stats.archived + stats.duplicates + stats.invalid >= expected:
            stop.set()

    thread = threading.Thread(
        target=lambda: result.append(run_archiver(settings, stop, on_flush)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    assert result, "the archiver did not stop"
    return result[0]


def test_archive_keeps_each_event_once_and_reads_back_in_time_order(stream_settings, tmp_path):
    settings = stream_settings.model_copy(
        update={
            "archive": stream_settings.archive.model_copy(
                update={"path": str(tmp_path / "archive"), "flush_seconds": 1.0}
            )
        }
    )
    events, _ = simulate(8, 3, parse_start("2025-01-06"), 90, 2, 2)
    produce(settings, iter_paced(events, 0))
    first = archive_until(settings, len(events))
    valid = [decode_event(e.payload) for e in events if not e.malformed]
    assert first.archived == len(valid) and first.invalid == 2

    # The same events again (a producer retry): nothing new is stored.
    produce(settings, iter_paced(events, 0))
    second = archive_until(settings, len(events))
    assert second.archived == 0 and second.duplicates == len(valid)

    archived = read_archive(tmp_path / "archive")
    assert sorted(e.event_id for e in archived) == sorted(e.event_id for e in valid)
    assert [e.occurred_at for e in archived] == sorted(e.occurred_at for e in valid)
    days = {p.name for p in (tmp_path / "archive" / "orders").iterdir()}
    assert days and all(d.startswith("date=2025-") for d in days)
