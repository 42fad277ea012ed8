"""How far a partition's stream is stored: the ``sweep_progress`` table's entries,
and the stream position each customer's record carries.

On the changelog (so a partition's next owner has them):

- ``"<partition>"``: the last sweep boundary run (event clock);
- ``"read:<topic>:<partition>"``: the read floor, the offset after the last
  message of that topic partition whose effects are stored; a message below it
  is skipped when read again.

In the local store only (never on the changelog), what the last store was
still sending when it returned, so that a restart after a ``kill -9`` sends it
again:

- ``"unsent:<partition>"``: the customers whose states were on their way to
  the changelog;
- ``"unsent-records:<partition>"``: the warnings and dead letters the batch
  had sent (the local store holds their effects before they are delivered).

Each customer's record also says where the stream stood when it was stored
(:func:`stamp`), so after a crash that stored a record but not its
partition's read floors, an event it holds is recognised (:func:`holds`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from churnwatch.core.topics import Topic
from churnwatch.pipeline.state import StateBlock

#: A record for an output topic: (topic, key, value).
Outgoing = tuple[Topic, bytes | None, bytes]
#: The local note of a partition whose last store's records were all delivered.
DELIVERED = "[]"


def read_floor_key(topic: str, partition: int) -> str:
    return f"read:{topic}:{partition}"


def unsent_key(partition: int) -> str:
    return f"unsent:{partition}"


def unsent_records_key(partition: int) -> str:
    return f"unsent-records:{partition}"


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

    def unsent_customers(self) -> list[str]:
        noted = self.table.data.get(unsent_key(self.partition))
        return list(json.loads(noted)) if noted else []

    def unsent_records(self) -> list[Outgoing]:
        noted = self.table.data.get(unsent_records_key(self.partition))
        return [
            (Topic(topic), _unb64(key), base64.b64decode(value))
            for topic, key, value in (json.loads(noted) if noted else [])
        ]


def note_unsent_customers(local: Any, partition: int, customer_ids: list[str]) -> None:
    """Note in the local store (``sweep_progress``'s ``data``) the customers being sent."""
    local[unsent_key(partition)] = json.dumps(customer_ids)


def note_records(local: Any, partition: int, records: Iterable[Outgoing]) -> bool:
    """Note the records a store sends, replacing the last store's note; False when
    there was nothing to note and nothing to replace."""
    note = json.dumps([[topic.value, _b64(key), _b64(value)] for topic, key, value in records])
    key = unsent_records_key(partition)
    if note == DELIVERED and local.get(key) == DELIVERED:
        return False
    local[key] = note
    return True


def note_delivered(local: Any, partition: int) -> None:
    local[unsent_records_key(partition)] = DELIVERED


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


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
