"""How far a partition's stream is stored: the ``sweep_progress`` table's entries,
and the stream position each customer's record carries.

On the changelog (so a partition's next owner has them):

- ``"<partition>"``: the last sweep boundary run (event clock);
- ``"read:<topic>:<partition>"``: the read floor, the offset after the last
  message of that topic partition whose effects are stored; a message below it
  is skipped when read again.

Both are written by a checkpoint (:mod:`pipeline.checkpoint`) after the states
they vouch for. Each customer's record also says where the stream stood when
it was stored (:func:`stamp`), so after a crash that delivered a record but
not its partition's read floors or commit, an event it holds is recognised
(:func:`holds`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from churnwatch.core.topics import Topic
from churnwatch.pipeline.state import StateBlock

#: A record for an output topic: (topic, key, value).
Outgoing = tuple[Topic, bytes | None, bytes]


def read_floor_key(topic: str, partition: int) -> str:
    return f"read:{topic}:{partition}"


class PartitionProgress:
    """One partition's entries in the ``sweep_progress`` table (read when the
    partition's reading starts)."""

    def __init__(self, table: Any, partition: int) -> None:
        self.table = table
        self.partition = partition

    def last_sweep(self) -> float:
        return float(self.table.get(str(self.partition)) or 0.0)

    def read_floors(self, topics: Iterable[str]) -> dict[str, int]:
        floors = {}
        for name in topics:
            floor = self.table.get(read_floor_key(name, self.partition))
            if floor:
                floors[name] = int(floor)
        return floors


def stamp(
    block: StateBlock, rows: Iterable[int], last_sweep: float, clock: float, offsets: list[int]
) -> None:
    """Record in each row where the stream stands: the partition's last sweep, its
    event clock (every event at or before it applied) and the highest offset read
    of each input topic (in the order of ``stream_offsets``)."""
    at = np.fromiter(rows, np.intp)
    data = block.data
    data["stream_sweep"][at] = np.maximum(data["stream_sweep"][at], last_sweep)
    data["stream_clock"][at] = np.maximum(data["stream_clock"][at], clock)
    data["stream_offsets"][at] = np.maximum(data["stream_offsets"][at], np.array(offsets))


def holds(block: StateBlock, customer_id: str, event_time: float, topic: int, offset: int) -> bool:
    """Whether the customer's stored record holds the event at ``offset`` of input topic
    number ``topic`` already: it was read (offset at or below the highest read when
    the record was stored) and not waiting (at or before the clock then)."""
    row = block.rows.get(customer_id)
    if row is None:
        return False
    col = block.col
    return bool(
        event_time <= col["stream_clock"][row] and offset <= col["stream_offsets"][row, topic]
    )
