"""The one module that adapts Faust: everything that touches its internals.

A Faust upgrade changes this file and no other (``tests/unit/test_layers.py``
fails on a private Faust name used anywhere else). It holds what the worker
needs from Faust that Faust's public API does not give:

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

**End offsets.** Faust's table recovery asks the broker for each changelog partition's end
(``ListOffsets(latest)``) and refuses to start (``ConsistencyError``) when the
local store has recorded an offset past it. The embedded Tansu broker answers
``ListOffsets`` with the base offset of the partition's last record batch + 1:
short of the true end by the rest of that batch (a batch of 5 at offsets 2-6 is
answered 3). The worker writes its changelog in batches, so after a ``kill -9``
every restart died, and a recovery from an empty store stopped short of the
last records. A fetch response carries the true high watermark, so here each
answer is checked by fetching one record from it. Apache Kafka's two answers
agree; the check costs one short-lived consumer per recovery.

**Recovery where the local store is ahead.** Faust keeps each table partition
in a local store (RocksDB by default) and records there the last changelog
offset the store holds. On start, or when a
partition is assigned, it reads the changelog from that offset on. When the
recorded offset is past the changelog's end, the local copy holds changes the
broker does not have (the broker lost its data, the topic was deleted and made
again, an unclean leader election cut its tail), and Faust refuses to start
(``ConsistencyError``) on every restart. The changelog is the state's source of
truth and the other workers' copies come from it, so here such a partition's
local copy is dropped, with a warning saying what happened, and the partition
is rebuilt from the changelog like a new worker's.

**Writing tables from a batch.** :func:`storing_for` files table writes under a
partition (Faust takes it from the stream's current event, and batch
delivery has no stream).

**Transactions** (``worker.processing_guarantee: exactly_once``). In that mode
Faust starts one transactional producer per assigned input partition (its
``TransactionManager``, on every rebalance: a new owner's producer fences the
old owner's and aborts its open transaction), and its consumer reads
``read_committed``. Its own send and commit paths do not fit the batch path:
``TransactionManager.send`` picks the producer by the *destination* topic's
assignor group, which the warnings and dead-letter topics have none of, and
its producer's ``begin``/``commit_transaction`` log errors instead of raising.
So the worker takes the producer itself (:func:`transaction_producer`) and
runs the transaction (:class:`pipeline.storing.FaustTransactions`). Faust asks
the end of a changelog, in that mode, from the consumer's last stable offsets,
which are known only for partitions fetched already (None for those a
recovery is about to read); here the broker is asked (``ListOffsets`` read
committed: the last stable offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.streams import _current_event
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.consumer import CONSUMER_FETCHING, TopicPartitionGroup, TransactionManager
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message, TopicT

log = logging.getLogger(__name__)

PROBE_SECONDS = 10.0


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: Any) -> Mapping[TP, int]:
        if self.consumer.in_transaction:  # (Tansu has no transactions: no probe)
            return dict(await self._ensure_consumer().end_offsets(list(partitions)))
        reported = dict(await super()._highwaters(partitions))
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
        raise TypeError(f"batch delivery needs pipeline.faust_adapter.Transport, not {transport!r}")
    transport.batch_topics = frozenset(topic.topics)
    transport.batch_handler = handler
    transport.idle_handler = idle
    app.topics.add(topic)


def paused_by_consumer(app: faust.App) -> set[TP]:
    """The topic partitions Faust's consumer holds paused (it pauses and resumes
    them around recoveries too; after quick successive rebalances a pause can
    outlive the recovery that set it)."""
    return set(app.consumer._paused_partitions)  # type: ignore[attr-defined]  # noqa: SLF001 - no public view


@contextlib.contextmanager
def storing_for(app: faust.App, partition: int) -> Iterator[None]:
    """Table writes in the block go to ``partition`` of the local store.

    Faust's stores file a key under the partition of the event being processed
    (a stream sets it; only its message's partition is read); batch delivery
    and the wall clock's sweeps have no stream, so this sets one.
    """
    message = Message("", partition, -1, 0.0, 0, None, None, None, None)
    event = app.create_event(None, None, None, message)
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class NoTransaction(Exception):
    """The transactional producer of an input partition is missing: the broker
    refused it one (no transactions: the embedded Tansu broker), or another
    worker's producer fenced it (the partition is that worker's now)."""


def transaction_producer(app: faust.App, topic: str, partition: int) -> AIOKafkaProducer:
    """The transactional producer Faust keeps for input ``topic``'s ``partition``,
    in a transaction (begun here unless Faust began it at the assignment)."""
    group = app.assignor.group_for_topic(topic)
    tid = TransactionManager.transactional_id_format.format(
        tpg=TopicPartitionGroup(topic, partition, group), group_id=app.conf.id
    )
    producer = app.producer._transaction_producers.get(tid)  # type: ignore[attr-defined]  # noqa: SLF001
    if producer is None:
        raise NoTransaction(
            f"no transactional producer {tid!r} for {topic}[{partition}]: the broker "
            "refused it one (exactly_once needs a broker with transactions, such as "
            "Apache Kafka) or another worker's fenced it (the partition is that worker's now)"
        )
    return cast(AIOKafkaProducer, producer)


async def begun(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    """``producer`` in a transaction: Faust begins one at each assignment, the
    worker after each commit it makes."""
    if not producer._txn_manager.is_in_transaction():  # noqa: SLF001 - aiokafka has no public view
        await producer.begin_transaction()
    return producer


class Recovery(FaustRecovery):
    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if title == "active":  # (its ends are known by now; the seek comes next)
            self._rebuild_where_ahead(tps, destination, self.active_highwaters)

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        if title == "standby":  # (its offsets were sought already: seek again)
            ahead = self._rebuild_where_ahead(tps, self.standby_offsets, destination)
            if ahead:
                await self._seek_offsets(consumer, ahead, self.standby_offsets, title)

    def _rebuild_where_ahead(
        self, tps: set[TP], offsets: Counter[TP], highwaters: Counter[TP]
    ) -> set[TP]:
        """Drop the local copy of each partition whose recorded offset is past the
        changelog's end, and read that changelog from its start instead."""
        ahead = set()
        for tp in tps:
            local, end = offsets.get(tp), highwaters.get(tp)  # last offsets, -1: none
            if local is None or end is None or local <= end:
                continue
            table = self.tables._changelogs.get(tp.topic)  # noqa: SLF001
            if table is None:
                continue
            dropped = drop_local_partition(table, tp.partition)
            log.warning(
                "%s[%s]: the local store holds changelog offset %s but the broker's "
                "changelog ends at %s (the broker lost data, or the topic was deleted "
                "and made again); dropped the local copy (%s keys) and rebuilding the "
                "partition from the changelog",
                tp.topic,
                tp.partition,
                local,
                end,
                dropped,
            )
            offsets[tp] = -1  # read the changelog from its start
            ahead.add(tp)
        return ahead


def drop_local_partition(table: Any, partition: int) -> int:
    """Delete every key of one partition of ``table``'s local store; how many."""
    store = table.data
    db_for = getattr(store, "_db_for_partition", None)
    if db_for is None:  # an in-memory store records no offsets: never ahead
        return 0
    db = db_for(partition)
    keys = list(db.keys())
    for key in keys:
        db.delete(key)
    index = getattr(store, "_key_index", None)
    if index is not None:
        index.clear()  # a cache of which partition holds a key
    return len(keys) - (store.offset_key in keys)


class TableManager(FaustTableManager):
    """Faust's table manager with :class:`Recovery` (``TableManager=`` of the app)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery  # type: ignore[return-value]
