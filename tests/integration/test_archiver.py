"""`churnwatch archive`: every event once in Parquet by event date, even when delivered twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from churnwatch.consumers.archiver import ArchiveStats, read_archive, run_archiver
from churnwatch.core.broker import start_child, stop_child
from churnwatch.pipeline.events import decode_event
from churnwatch.producers.produce import produce
from churnwatch.producers.simulator import iter_paced, parse_start, simulate
from tests.integration.conftest import settings_env

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


def archived_ids(root) -> list[str]:
    """The event ids in the archive's files (the id column only: cheap to poll)."""
    return [
        event_id
        for part in sorted(root.glob("*/date=*/*.parquet"))
        for event_id in pd.read_parquet(part, columns=["event_id"])["event_id"]
    ]


def test_an_archiver_killed_mid_stream_and_restarted_keeps_each_event_once(
    stream_settings, tmp_path
):
    """kill -9 of `churnwatch archive` while it writes; a restart resumes from the
    committed offsets and skips what the files already hold: every valid event
    is in the archive exactly once."""
    root = tmp_path / "archive"
    env = dict(
        os.environ,
        **settings_env(stream_settings),
        CHURNWATCH_ARCHIVE__PATH=str(root),
        CHURNWATCH_ARCHIVE__GROUP_ID=f"{stream_settings.worker.app_id}-archiver",
        CHURNWATCH_ARCHIVE__FLUSH_EVENTS="500",
        CHURNWATCH_ARCHIVE__FLUSH_SECONDS="1",
    )
    events, _ = simulate(100, 5, parse_start("2025-01-06"), 90, 3, 4)
    # Half now, the rest only after the kill: an archiver that reads faster than
    # this test polls still leaves work for the restart.
    half = len(events) // 2
    produce(stream_settings, iter_paced(events[:half], 0))
    valid = sorted(decode_event(e.payload).event_id for e in events if not e.malformed)

    def archiver() -> subprocess.Popen[bytes]:
        return start_child(
            [sys.executable, "-m", "churnwatch.cli", "archive"], env=env, log=tmp_path / "a.log"
        )

    t0 = time.monotonic()
    proc = archiver()
    deadline = time.monotonic() + 120
    while len(archived_ids(root)) < len(valid) * 0.25:
        assert proc.poll() is None and time.monotonic() < deadline, "the archiver stalled"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    at_kill = len(archived_ids(root))
    print(f"killed at {time.monotonic() - t0:.1f} s")
    assert at_kill < len(valid), "killed too late to test a restart"
    produce(stream_settings, iter_paced(events[half:], 0))

    proc = archiver()
    try:
        while len(archived_ids(root)) < len(valid):
            assert proc.poll() is None and time.monotonic() < deadline + 120, "never finished"
            time.sleep(0.5)
        print(f"all archived at {time.monotonic() - t0:.1f} s")
        time.sleep(2)  # anything written twice would show now
    finally:
        stop_child(proc)
    assert sorted(archived_ids(root)) == valid
    print(f"killed with {at_kill} of {len(valid)} events archived; the restart added the rest once")
