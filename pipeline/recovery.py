"""Table recovery that rebuilds from the changelog where the local store is ahead of it.

Faust keeps each table partition in a local store (RocksDB by default) and
records there the last changelog offset the store holds. On start, or when a
partition is assigned, it reads the changelog from that offset on. When the
recorded offset is past the changelog's end, the local copy holds changes the
broker does not have (the broker lost its data, the topic was deleted and made
again, an unclean leader election cut its tail), and Faust refuses to start
(``ConsistencyError``) on every restart. The changelog is the state's source of
truth and the other workers' copies come from it, so here such a partition's
local copy is dropped, with a warning saying what happened, and the partition
is rebuilt from the changelog like a new worker's.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP

log = logging.getLogger(__name__)


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
