"""When each event of a partition is applied and each sweep runs (pure: no I/O, no Faust).

Input topics are read at different speeds, so events reach the worker out of
event-time order. The :class:`Watermark` says how far a partition's event time
is known to be complete, the :class:`Sequencer` (with its
:class:`ReorderBuffer`) turns events and the watermark into steps, each event
applied (:class:`Apply`) before the sweeps (:class:`Sweep`) whose boundary
is after it, and :class:`ReadAhead` pauses topics read far ahead so few
events wait. The worker and a batch run over history use the same classes, so
they take the same steps. :class:`InOrderAcks` says which of a partition's
messages may be acked, in offset order, however they finished.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


def due_sweeps(last_sweep: float, watermark: float, every_seconds: float) -> list[float]:
    """Sweep times (multiples of ``every_seconds``) in ``(last_sweep, watermark]``.

    With ``last_sweep`` 0 (never swept) only the latest boundary is due, so a
    worker starting on old data does not sweep its whole history at once.
    """
    latest = math.floor(watermark / every_seconds) * every_seconds
    if latest <= last_sweep:
        return []
    if last_sweep <= 0:
        return [latest]
    first = math.floor(last_sweep / every_seconds) * every_seconds + every_seconds
    count = int(round((latest - first) / every_seconds)) + 1
    return [first + i * every_seconds for i in range(count)]


class Watermark:
    """Event-time watermark of each partition, across several input topics.

    Topics are read at different speeds, so the newest event time of one topic
    says nothing about events still unread on another. The watermark of a
    partition is therefore the oldest "newest event time" among its topics that
    still have unread messages (their unread events can only be newer, since
    each topic partition is in event-time order); when nothing is unread, it is
    the newest event time seen. It never goes back.
    """

    def __init__(self, topics: Iterable[str], idle_wait: float = 0.0) -> None:
        self.topics = tuple(topics)
        #: How long (seconds, on the caller's clock) a topic partition that has
        #: nothing unread still holds the watermark back, as Kafka Streams'
        #: ``max.task.idle.ms``: read to its end is not "no older event to come"
        #: while a producer is still writing it (Apache Kafka reports the end of
        #: a partition the moment it is read to it; events of another topic
        #: written a moment later but older would otherwise arrive late).
        self.idle_wait = idle_wait
        self.latest: dict[tuple[str, int], float] = {}
        self.offset: dict[tuple[str, int], int] = {}
        self.value: dict[int, float] = {}
        self.caught_up: dict[tuple[str, int], float] = {}

    def reset(self) -> None:
        """Forget everything (after a rebalance: partitions may have moved)."""
        self.latest.clear()
        self.offset.clear()
        self.value.clear()
        self.caught_up.clear()

    def observe(
        self, topic: str, partition: int, offset: int, event_time: float | None = None
    ) -> None:
        """Record a consumed message (``event_time`` None: unusable, but read)."""
        key = (topic, partition)
        self.offset[key] = max(offset, self.offset.get(key, -1))
        self.caught_up.pop(key, None)  # it gave a message: not idle (yet) again
        if event_time is not None:
            self.latest[key] = max(event_time, self.latest.get(key, event_time))

    def start(self, topic: str, partition: int, next_offset: int) -> None:
        """Reading of the topic partition starts at ``next_offset`` (after a restart or a
        rebalance: the committed offset). Nothing before it counts as unread, so a
        partition with nothing new since does not hold the watermark back."""
        key = (topic, partition)
        self.offset[key] = max(self.offset.get(key, -1), next_offset - 1)

    def describe(self, partition: int, highwater: Callable[[str, int], int | None]) -> str:
        """Where each topic of the partition stands (for a log line when the clock waits)."""
        parts = []
        for topic in self.topics:
            key = (topic, partition)
            latest = self.latest.get(key)
            seen = "nothing" if latest is None else f"{latest:.0f}"
            parts.append(
                f"{topic}[{partition}] read to {self.offset.get(key, -1)} of end "
                f"{highwater(topic, partition)}, newest event time {seen}"
            )
        return "; ".join(parts)

    def advance(
        self, partition: int, highwater: Callable[[str, int], int | None], now: float = 0.0
    ) -> float:
        """Recompute the partition's watermark.

        ``highwater(topic, partition)`` is the offset after the last message of
        that topic partition, or None while unknown. ``now`` (seconds, any
        monotonic clock) times how long a topic partition read to its end has
        been so (see ``idle_wait``).
        """
        lagging: list[float] = []
        seen: list[float] = []
        for topic in self.topics:
            key = (topic, partition)
            end = highwater(topic, partition)
            # An unknown end (no fetch answered yet) may hide older events.
            unread = end is None or self.offset.get(key, -1) + 1 < end
            if not unread and self.idle_wait > 0:
                # read to its end: it holds the clock back until idle long enough
                unread = now - self.caught_up.setdefault(key, now) < self.idle_wait
            if key in self.latest:
                seen.append(self.latest[key])
                if unread:
                    lagging.append(self.latest[key])
            elif unread:
                return self.value.get(partition, 0.0)  # nothing known yet about its events
        if seen:
            candidate = min(lagging) if lagging else max(seen)
            self.value[partition] = max(self.value.get(partition, 0.0), candidate)
        return self.value.get(partition, 0.0)


class ReadAhead:
    """Which topic partitions to stop fetching, so the events waiting stay few.

    Events wait in the reorder buffer while one topic is read ahead of the
    others in event time (a small topic can be read to its end in one fetch);
    on a long history that held half of it at once. Once more than ``limit``
    events of a partition wait, its topics that are ahead of the watermark
    are paused, each until the watermark has caught up with the newest event
    read from it. The topic the watermark waits for is never paused (its
    newest event is the watermark), so the clock always moves, and at most
    ``limit`` events plus one fetch wait per partition. Nothing is dropped or
    read twice: a paused topic partition is fetched on from where it stopped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused: set[tuple[str, int]] = set()

    def update(
        self, partition: int, waiting: int, watermark: Watermark
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The topic partitions of ``partition`` to pause now, and those to resume."""
        # Until every topic has given an event the watermark is not known, and
        # the topics that have are all ahead of it.
        now = watermark.value.get(partition, -math.inf)
        # A paused topic is read again once the clock has caught up with it (its
        # events have all been released then).
        resume = [
            key
            for key in self.paused
            if key[1] == partition and watermark.latest.get(key, now) <= now
        ]
        pause = []
        if waiting > self.limit:
            pause = [
                (topic, partition)
                for topic in watermark.topics
                if watermark.latest.get((topic, partition), -math.inf) > now
                and (topic, partition) not in self.paused
            ]
        self.paused.difference_update(resume)
        self.paused.update(pause)
        return pause, sorted(resume)

    def clear(self) -> None:
        """Forget the pauses (a rebalance: the consumer forgets them too)."""
        self.paused.clear()


class Stall:
    """How long a count (a partition's waiting events) has stayed the same, to say
    so every ``every`` seconds while it does: the clock may be waiting for a
    topic partition that nobody reads."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._since: tuple[int, float] | None = None

    def check(self, count: int, now: float) -> float | None:
        """The seconds ``count`` has not moved when a report is due, else None."""
        held, since = self._since or (-1, now)
        if not count or held != count:
            self._since = (count, now) if count else None
            return None
        if now - since < self.every:
            return None
        self._since = (count, now)
        return now - since


@dataclass(frozen=True, slots=True)
class Apply(Generic[T]):
    """Apply this event now (``late``: a sweep has already passed its time)."""

    item: T
    late: bool = False


@dataclass(frozen=True, slots=True)
class Sweep:
    """Re-evaluate every customer of the partition as of ``boundary``."""

    boundary: float


class Sequencer(Generic[T]):
    """When each event of a partition is applied, and when its sweeps run.

    Events wait in a :class:`ReorderBuffer` until the clock (the watermark
    minus the allowed lateness) passes them; each sweep boundary the clock
    passes is swept after the events before it and before the ones after it.
    An event older than a sweep already run is late: applied at once (never
    dropped) and marked so it can be counted.
    """

    def __init__(self, every_seconds: float, lateness_seconds: float = 0.0) -> None:
        self.every = every_seconds
        self.lateness = lateness_seconds
        self.buffer: ReorderBuffer[T] = ReorderBuffer()
        self.last_sweep: dict[int, float] = {}

    def offer(
        self, partition: int, event_time: float, item: T, watermark: float | None = None
    ) -> list[Apply[T] | Sweep]:
        """Take an event; with a ``watermark``, also advance the clock to it."""
        steps: list[Apply[T] | Sweep] = []
        if event_time < self.last_sweep.get(partition, 0.0):
            steps.append(Apply(item, late=True))
        else:
            self.buffer.push(partition, event_time, item)
        return steps if watermark is None else steps + self.advance(partition, watermark)

    def advance(self, partition: int, watermark: float) -> list[Apply[T] | Sweep]:
        clock = watermark - self.lateness
        steps: list[Apply[T] | Sweep] = []
        last = self.last_sweep.get(partition, 0.0)
        oldest = self.buffer.oldest(partition)
        if last <= 0 and oldest is not None:
            # Never swept, events held: the sweeps start at the boundary of the oldest
            # of them, as in a batch run (whose clock moves event by event), however
            # far the clock has jumped since (it waits while a topic is idle).
            last = math.floor((oldest - self.lateness) / self.every) * self.every - self.every
        for boundary in due_sweeps(last, clock, self.every):
            steps += [Apply(item) for item in self.buffer.release(partition, boundary)]
            steps.append(Sweep(boundary))
            self.last_sweep[partition] = boundary
        steps += [Apply(item) for item in self.buffer.release(partition, clock, inclusive=True)]
        return steps

    def drain(self, partition: int) -> list[Apply[T] | Sweep]:
        """Everything still held (end of a batch run)."""
        return [Apply(item) for item in self.buffer.release(partition, math.inf)]

    def holding(self) -> list[int]:
        """The partitions with events waiting."""
        return self.buffer.partitions()

    def clear(self) -> None:
        self.buffer.clear()
        self.last_sweep.clear()

    def __len__(self) -> int:
        return len(self.buffer)


class ReorderBuffer(Generic[T]):
    """Holds each partition's events until the watermark says none older can come.

    Topics are consumed at different speeds; applying an event from a topic
    that is read ahead would let a sweep see the future. Events wait here and
    are released in event-time order, so every sweep sees exactly the events
    before its boundary, as in a batch run.
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[float, int, T]]] = {}
        self._seq = itertools.count()

    def push(self, partition: int, event_time: float, item: T) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (event_time, next(self._seq), item))

    def release(self, partition: int, before: float, inclusive: bool = False) -> list[T]:
        """Pop the items older than ``before`` (or at it, if ``inclusive``), oldest first."""
        heap = self._heaps.get(partition, [])
        out: list[T] = []
        while heap and (heap[0][0] < before or (inclusive and heap[0][0] == before)):
            out.append(heapq.heappop(heap)[2])
        return out

    def held(self, partition: int) -> int:
        return len(self._heaps.get(partition, ()))

    def oldest(self, partition: int) -> float | None:
        """The event time of the oldest item held, or None."""
        heap = self._heaps.get(partition)
        return heap[0][0] if heap else None

    def partitions(self) -> list[int]:
        return [partition for partition, heap in self._heaps.items() if heap]

    def clear(self) -> None:
        self._heaps.clear()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())


class Consumed(Protocol):
    """A message as the acks see it: its topic partition and offset."""

    @property
    def tp(self) -> Hashable: ...

    @property
    def offset(self) -> int: ...


M = TypeVar("M", bound=Consumed)


class InOrderAcks(Generic[M]):
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
        self._taken: dict[Hashable, list[int]] = {}  # offsets received, smallest first
        self._finished: dict[Hashable, set[int]] = {}  # of those, handled (removed lazily)
        self._ready: dict[Hashable, list[tuple[int, int, M]]] = {}  # handled, not acked
        self._order = itertools.count()

    def received(self, message: M) -> None:
        heapq.heappush(self._taken.setdefault(message.tp, []), message.offset)

    def finished(self, message: M) -> None:
        tp = message.tp
        self._finished.setdefault(tp, set()).add(message.offset)
        heapq.heappush(self._ready.setdefault(tp, []), (message.offset, next(self._order), message))

    def ackable(self) -> list[M]:
        """The finished messages with nothing unfinished before them (removed here)."""
        out: list[M] = []
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
