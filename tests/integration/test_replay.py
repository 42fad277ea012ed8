"""`churnwatch replay` puts a real export's rows on the topics, and bad rows on dead letters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import DeadLetter, decode_event
from tests.integration.conftest import read_topic, settings_env

pytestmark = pytest.mark.integration

MAPPING = """
source: {timezone: UTC}
events:
  - type: order_placed
    fields:
      event_id: {template: "o-{num}"}
      customer_id: {column: cust}
      occurred_at: {column: date, format: "%Y-%m-%d"}
      order_id: {column: num}
      amount: {column: total}
"""


def test_replay_produces_events_in_time_order_and_reports_bad_rows(stream_settings, tmp_path):
    csv = tmp_path / "orders.csv"
    csv.write_text(
        "cust,num,date,total\nC1,2,2025-02-01,10\nC1,1,2025-01-01,20\nC2,3,2025-01-15,abc\n"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    result = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "replay", str(csv), "--mapping", str(mapping)],
        env=dict(os.environ, **settings_env(stream_settings)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "2 events" in result.stdout and "1 row(s) rejected" in result.stdout
    orders = [decode_event(v) for v in read_topic(stream_settings, Topic.ORDERS)]
    assert [o.order_id for o in orders] == ["1", "2"]
    (letter,) = [
        DeadLetter.model_validate_json(v) for v in read_topic(stream_settings, Topic.DEAD_LETTERS)
    ]
    assert letter.offset == 3 and "amount" in letter.error and "abc" in letter.payload
