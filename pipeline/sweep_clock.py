"""Timer ``sweep_clock`` (wall-clock mode): asks each partition to check for a due sweep.

Silent customers send no events, so in live operation something else must
wake the agent up: every ``clock.wall_tick_seconds`` this worker sends a tick
to each partition of the ticks topic it owns; the agent sweeps the partition
when a sweep boundary has passed. Ticks go through Kafka so the sweep runs
inside the partition's stream, where table writes are allowed and ordered.
"""

from __future__ import annotations

from datetime import UTC, datetime

from churnwatch.core.topics import Topic
from churnwatch.pipeline.app import Pipeline
from churnwatch.pipeline.events import Tick, encode_event


def register(p: Pipeline) -> None:
    ticks_name = p.settings.topic(Topic.TICKS)

    @p.app.timer(interval=p.settings.clock.wall_tick_seconds, name="sweep_clock")  # type: ignore[untyped-decorator]
    async def sweep_clock() -> None:
        payload = encode_event(Tick(sent_at=datetime.now(UTC)))
        for tp in p.app.assignor.assigned_actives():
            if tp.topic == ticks_name:
                await p.ticks.send(key=b"tick", value=payload, partition=tp.partition)
