"""The same real history through Kafka + Faust and through the batch path gives the same answer.

Online Retail (../shared/data), a fair subset of customers (every 6th by id),
replayed through the real broker and worker; the batch path runs the same
events in one process. Features of every customer at the end and the warning
episodes must be identical.
"""

from __future__ import annotations

import zlib

import pytest

from churnwatch.consumers.consistency import compare, live_states
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import WarningRecord
from churnwatch.pipeline.features import read_features
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.state import to_epoch
from churnwatch.producers.loading import load_events
from churnwatch.producers.produce import produce
from churnwatch.producers.replay import as_messages
from churnwatch.producers.simulator import iter_paced
from tests.integration.conftest import read_topic, wait_processed
from tests.paths import REPO

pytestmark = pytest.mark.integration

DATA = REPO.parent / "shared" / "data" / "online_retail" / "invoices.csv.gz"


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent (CI always has it)")
def test_online_retail_stream_and_batch_agree(stream_settings, worker):
    events, _ = load_events(DATA, REPO / "configs" / "mappings" / "online_retail.yaml")
    events = [e for e in events if zlib.crc32(e.customer_id.encode()) % 6 == 0]
    assert len({e.customer_id for e in events}) > 500

    proc = worker()
    stats = produce(stream_settings, iter_paced(as_messages(events), 0))
    assert stats.failed == 0
    wait_processed(stream_settings, len(events), proc, timeout=300)

    batch_states, batch_warnings = run_history(
        events, stream_settings.warnings, stream_settings.clock.sweep_every_hours * 3600
    )
    stream_states = live_states(stream_settings)
    assert set(stream_states) == set(batch_states)
    end = to_epoch(events[-1].occurred_at)
    w = stream_settings.warnings
    for customer, state in batch_states.items():
        expected = read_features(state, end, w.recent_weeks, w.baseline_weeks)
        got = read_features(stream_states[customer], end, w.recent_weeks, w.baseline_weeks)
        assert got == expected, customer
    # the consistency check reads the same changelog and agrees
    report = compare(stream_states, events, stream_settings, sample=100)
    assert report.compared == 100 and not report.mismatched and not report.lagging

    stream_warnings = [
        WarningRecord.model_validate_json(v) for v in read_topic(stream_settings, Topic.WARNINGS)
    ]
    assert batch_warnings, "the subset should raise some warnings"
    assert sorted(r.model_dump_json() for r in stream_warnings) == sorted(
        r.model_dump_json() for r in batch_warnings
    )
