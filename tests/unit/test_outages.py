"""Consumer loops ride out a broker outage (pure: a stand-in consumer)."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    UnsupportedVersionError,
)

from churnwatch.core.topics import ThroughOutages


class Consumer:
    """Polls answer from a script: a dict, or an exception to raise."""

    def __init__(self, polls: list, commits: list) -> None:
        self.polls, self.commits = polls, commits

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        answer = self.polls.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def commit(self) -> None:
        answer = self.commits.pop(0)
        if isinstance(answer, Exception):
            raise answer


def test_a_cluster_down_for_a_while_is_waited_out_and_said_once(caplog):
    down = KafkaConnectionError("111 ECONNREFUSED")
    consumer = Consumer([down, down, down, {"tp": ["m"]}], [])
    kafka = ThroughOutages(consumer, "archiver", pause=0)
    with caplog.at_level(logging.WARNING):
        got = [kafka.poll(500) for _ in range(4)]
    assert got == [{}, {}, {}, {"tp": ["m"]}]  # nothing lost, nothing made up
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert "archiver: Kafka unreachable" in said[0]
    assert "reachable again after" in said[1]


@pytest.mark.parametrize(
    "refused", [CommitFailedError(), RebalanceInProgressError(), UnknownMemberIdError()]
)
def test_a_failed_commit_is_left_to_the_next_and_other_errors_still_raise(refused):
    # (RebalanceInProgressError: the archiver died of it when a broker kill moved the
    # group's coordinator, CI 2026-12-07)
    kafka = ThroughOutages(Consumer([UnsupportedVersionError()], [refused, None]), "x")
    assert kafka.commit() is False  # a rebalance took the partitions: the next commit covers it
    assert kafka.commit() is True
    with pytest.raises(UnsupportedVersionError):
        kafka.poll(500)  # not an outage: the loop must stop and say why
