"""Faust's Kafka transport, with end offsets checked against the partition's data.

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
from collections.abc import Mapping
from typing import Any, cast

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

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


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """``kafka://`` as Faust has it, with checked end offsets."""

    Consumer = _Consumer
