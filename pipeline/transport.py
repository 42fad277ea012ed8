"""Faust's Kafka transport, with input delivered a fetch at a time and end offsets
checked against the partition's data.

**Batches.** Faust hands every message to its streams one by one: for each it
starts two tasks and waits on them (``Service.wait_first``), makes an event,
and passes it through a queue and the stream's iterator. That costs about
100 microseconds a message, more than the whole rest of a bare consume loop,
so no worker built on Faust streams drains more than ~10,000 events/s here
(``churnwatch bench`` measures it). :func:`on_batches` takes the topics of one
handler out of that path: the consumer gives the handler every message of
those topics in one fetch as a list, once. Everything else stays Faust's: the
consumer group and its rebalances, the fetch (paused partitions, recovery
first), acks and commits (the handler acks with ``consumer.ack``), and every
other topic (changelogs) goes through the usual per-message path.

**End offsets.**

Faust's table recovery asks the broker for each changelog partition's end
(``ListOffsets(latest)``) and refuses to start (``ConsistencyError``) when the
local store has recorded an offset past it. The embedded Tansu broker answers
``ListOffsets`` with the base offset of the partition's last record batch + 1:
short of the true end by the rest of that batch (a batch of 5 at offsets 2-6 is
answered 3). The worker writes its changelog in batches, so after a ``kill -9``
every restart died, and a recovery from an empty store stopped short of the
last records. A fetch response carries the true high watermark, so here each
answer is checked by fetching one record from it. Apache Kafka's two answers
agree; the check costs one short-lived consumer per recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message, TopicT

PROBE_SECONDS = 10.0


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: Any) -> Mapping[TP, int]:
        reported = dict(await super()._highwaters(partitions))
        if self.consumer.in_transaction:
            return reported  # last stable offsets: not what a fetch reports
        fetch = {
            TopicPartition(tp.topic, tp.partition): tp for tp in partitions if reported.get(tp)
        }
        if not fetch:
            return reported
        probe = self._create_client_consumer(cast(driver.Transport, self.transport))
        await probe.start()
        try:
            probe.assign(list(fetch))
            for probed, tp in fetch.items():
                probe.seek(probed, reported[tp] - 1)
            deadline = asyncio.get_running_loop().time() + PROBE_SECONDS
            missing = list(fetch)
            while missing and asyncio.get_running_loop().time() < deadline:
                await probe.getmany(*missing, timeout_ms=200, max_records=1)
                missing = [probed for probed in missing if probe.highwater(probed) is None]
            for probed, tp in fetch.items():
                reported[tp] = max(reported[tp], probe.highwater(probed) or 0)
        finally:
            await probe.stop()
        return reported


BatchHandler = Callable[[list[Message]], Awaitable[None]]


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the fetch loop
        transport = cast(Transport, self.transport)
        handler = transport.batch_handler
        if handler is None:
            await super()._drain_messages(fetcher)
            return
        batch_topics = transport.batch_topics
        callback = self.callback
        to_message = self._to_message
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        track_end = self.app.monitor.track_tp_end_offset

        def stopping() -> bool:
            return bool(self._stopped.is_set() or fetcher._stopped.is_set())

        try:
            while not stopping():
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                if not records:
                    if transport.idle_handler is not None and self.flow_active:
                        await self.wait_first(transport.idle_handler(), self.suspend_flow.wait())
                    continue
                if not self.flow_active:
                    # A rebalance began during the fetch: what was fetched is
                    # read again from the committed offsets afterwards.
                    with contextlib.suppress(Exception):
                        await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                batch: list[Message] = []
                last: dict[TP, int] = {}
                before = {tp: read_offset[tp] for tp in records}
                for tp in records:
                    track_end(tp, self.highwater(tp))
                for tp, record in self.scheduler.iterate(records):
                    if (
                        active is not None
                        and tp not in active
                        and tp not in self._buffered_partitions  # (reassigned on a reset)
                    ):
                        continue
                    offset = record.offset
                    seen = last.get(tp, read_offset[tp])
                    if seen is not None and offset < seen:
                        continue  # fetched again after a seek: handled already
                    if seen and offset - seen > 1 and acks_enabled_for(tp.topic):
                        await self._add_gap(tp, seen + 1, offset)
                    message = to_message(tp, record)
                    if tp.topic in batch_topics:
                        batch.append(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    last[tp] = offset
                if self.app.consumer_generation_id == generation:
                    if batch:
                        await self.wait_first(handler(batch), self.suspend_flow.wait())
                    elif transport.idle_handler is not None:  # only other topics' messages
                        await self.wait_first(transport.idle_handler(), self.suspend_flow.wait())
                # Unless a rebalance sought back meanwhile: then the messages
                # not acked are read again from there.
                read_offset.update(
                    (tp, offset) for tp, offset in last.items() if read_offset[tp] == before[tp]
                )
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    """``kafka://`` as Faust has it, with checked end offsets and batch delivery."""

    Consumer = _Consumer
    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None
    idle_handler: Callable[[], Awaitable[None]] | None = None


def on_batches(
    app: faust.App,
    topic: TopicT,
    handler: BatchHandler,
    idle: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Subscribe ``app`` to ``topic`` and give ``handler`` its messages a fetch at a time.

    The handler gets the messages of one fetch (at most ``broker_max_poll_records``),
    in Faust's round-robin order across partitions, and must ack each message
    (``app.consumer.ack``) once its effects are stored; unacked messages are
    read again after a restart or a rebalance. While it runs, the next fetch
    waits. A rebalance cancels it; the messages it had are delivered again.
    ``idle()``, if given, is called instead after a fetch that found none of
    them (about once a second while the input is quiet), in the same way.
    """
    transport = app.transport
    if not isinstance(transport, Transport):
        raise TypeError(f"batch delivery needs pipeline.transport.Transport, not {transport!r}")
    transport.batch_topics = frozenset(topic.topics)
    transport.batch_handler = handler
    transport.idle_handler = idle
    app.topics.add(topic)


@contextlib.contextmanager
def storing_for(app: faust.App, message: Message) -> Iterator[None]:
    """Table writes in the block go to ``message``'s partition of the local store.

    Faust's stores file a key under the partition of the event being processed
    (a stream sets it); batch delivery has no stream, so this sets one.
    """
    event = app.create_event(message.key, message.value, message.headers, message)
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class InOrderAcks:
    """Which handled messages may be acked: per topic partition, only those below
    the lowest offset still in hand.

    Faust commits the first run of consecutive acked offsets and trusts it to
    start where reading started, but it does not check that when a partition
    has no committed offset yet (or it is 0), and lets one missing message
    through otherwise (``min(acked) - committed > 1``). Events held in the
    reorder buffer finish out of offset order, so acking each as it finished
    let a commit pass over a held event, which the next owner of the
    partition then never read. Acked in offset order, every commit means
    "everything before is applied and stored".
    """

    def __init__(self) -> None:
        self._taken: dict[TP, list[int]] = {}  # offsets received, smallest first
        self._finished: dict[TP, set[int]] = {}  # of those, handled (removed lazily)
        self._ready: dict[TP, list[tuple[int, int, Message]]] = {}  # handled, not acked
        self._order = itertools.count()

    def received(self, message: Message) -> None:
        heapq.heappush(self._taken.setdefault(message.tp, []), message.offset)

    def finished(self, message: Message) -> None:
        tp = message.tp
        self._finished.setdefault(tp, set()).add(message.offset)
        heapq.heappush(self._ready.setdefault(tp, []), (message.offset, next(self._order), message))

    def ackable(self) -> list[Message]:
        """The finished messages with nothing unfinished before them (removed here)."""
        out: list[Message] = []
        for tp, ready in self._ready.items():
            taken, finished = self._taken.get(tp, []), self._finished.get(tp, set())
            while taken and taken[0] in finished:
                finished.discard(heapq.heappop(taken))
            floor = taken[0] if taken else None
            while ready and (floor is None or ready[0][0] < floor):
                out.append(heapq.heappop(ready)[2])
        return out

    def clear(self) -> None:
        self._taken.clear()
        self._finished.clear()
        self._ready.clear()
