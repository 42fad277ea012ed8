from __future__ import annotations

from datetime import timedelta

from pipeline.events import Topic
from producers.replay import iter_speedup
from producers.simulator import SimEvent, iter_paced
from tests.factories import T0


def messages(days: list[float]) -> list[SimEvent]:
    return [SimEvent(T0 + timedelta(days=d), Topic.ORDERS, "C1", b"{}") for d in days]


def test_speedup_spreads_event_time_over_wall_time():
    due = [s for _, s in iter_speedup(messages([0, 1, 3]), speedup=86_400)]
    assert due == [0.0, 1.0, 3.0]  # a day per second
    assert [s for _, s in iter_speedup(messages([0, 5]), speedup=0)] == [0.0, 0.0]


def test_simulator_clock_is_days_per_second():
    due = [s for _, s in iter_paced(messages([0, 10, 20]), days_per_second=10)]
    assert due == [0.0, 1.0, 2.0]
