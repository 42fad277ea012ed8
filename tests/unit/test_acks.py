"""Acks in offset order (pure unit: messages are plain records)."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import TP

from churnwatch.pipeline.ordering import InOrderAcks


@dataclass(frozen=True)
class Msg:
    tp: TP
    offset: int


A, B = TP("orders", 0), TP("orders", 1)


def test_a_finished_message_waits_for_every_earlier_one_of_its_partition():
    acks = InOrderAcks()
    messages = [Msg(A, o) for o in range(5)] + [Msg(B, 7)]
    for m in messages:
        acks.received(m)
    # 0 finished, 1 held (reorder buffer), 2-4 finished, and B's only message.
    for m in [messages[0], messages[2], messages[3], messages[4], messages[5]]:
        acks.finished(m)
    assert acks.ackable() == [Msg(A, 0), Msg(B, 7)]
    assert acks.ackable() == []  # given once
    acks.finished(messages[1])
    assert acks.ackable() == [Msg(A, 1), Msg(A, 2), Msg(A, 3), Msg(A, 4)]


def test_messages_received_later_do_not_release_held_ones_and_clear_forgets_all():
    acks = InOrderAcks()
    first, second, third = Msg(A, 10), Msg(A, 11), Msg(A, 12)
    for m in (first, second):
        acks.received(m)
    acks.finished(second)
    assert acks.ackable() == []  # 10 is still held
    acks.received(third)
    acks.finished(third)
    assert acks.ackable() == []
    acks.clear()  # a rebalance: nothing held any more, nothing to ack
    assert acks.ackable() == []
