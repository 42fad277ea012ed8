from __future__ import annotations

from datetime import timedelta

from churnwatch.core.topics import Topic
from churnwatch.producers.simulator import SimEvent, iter_paced
from tests.factories import T0


def messages(days: list[float]) -> list[SimEvent]:
    return [SimEvent(T0 + timedelta(days=d), Topic.ORDERS, "C1", b"{}") for d in days]


def test_accelerated_clock_is_days_per_second():
    due = [s for _, s in iter_paced(messages([0, 10, 20]), days_per_second=10)]
    assert due == [0.0, 1.0, 2.0]


def test_replay_speedup_is_real_time_times_x():
    speedup = 86_400  # a day per second
    due = [s for _, s in iter_paced(messages([0, 1, 3]), days_per_second=speedup / 86_400)]
    assert due == [0.0, 1.0, 3.0]
    assert [s for _, s in iter_paced(messages([0, 5]), days_per_second=0)] == [0.0, 0.0]
