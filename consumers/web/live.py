"""The workers' live customer states, as the web inbox reads them.

The worker writes every customer's state to its table's changelog topic after
each batch (``<app_id>-customer_state-changelog``, the bytes of
:func:`pipeline.state_format.encode_state`) and each partition's sweep progress to
``<app_id>-sweep_progress-changelog``. :class:`LiveStates` follows both topics
from the beginning, without a consumer group, and keeps the newest state of
every customer: the features a page shows are the ones the worker holds now
(behind it by one batch at most), whichever worker owns the customer and
however many share the partitions.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from kafka import KafkaConsumer, TopicPartition

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Table, changelog_topic
from churnwatch.pipeline.features import Features as FeatureValues
from churnwatch.pipeline.features import features_of, weekly_history
from churnwatch.pipeline.health import health_view
from churnwatch.pipeline.processing import read_segmented
from churnwatch.pipeline.state import StateBlock
from churnwatch.pipeline.state_format import StateFormatError, decode_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveCustomer:
    """What the worker holds about one customer, read as of its partition's clock."""

    as_of: datetime
    features: FeatureValues
    weeks: list[datetime]  # the first day of each stored week, oldest first
    orders: list[int]
    revenue: list[float]
    open_invoices: list[tuple[str, float, datetime]]  # invoice id, outstanding, due
    open_complaints: list[tuple[str, datetime, int, str]]  # id, opened, severity, category
    #: pipeline.health.health_view's: the score, its parts, trends, weekly history
    health: dict[str, Any] | None = None


@dataclass(frozen=True)
class Summary:
    """The few live values the inbox lists for every customer."""

    quadrant: str
    revenue_52w: float
    health: int | None = None  # the health score, 0-100
    health_trend_7d: int | None = None
    #: the parts that moved most in a week (family, points), largest first
    health_moved: tuple[tuple[str, int], ...] = ()


class LiveStates:
    """Follows the worker's changelog topics in a thread; see the module's doc."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.block = StateBlock()
        self.partition_of: dict[str, int] = {}
        self.progress: dict[int, float] = {}
        self.lock = threading.Lock()
        self.caught_up = threading.Event()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.states_topic = changelog_topic(settings, Table.CUSTOMER_STATE)
        self.progress_topic = changelog_topic(settings, Table.SWEEP_PROGRESS)

    # --- following ----------------------------------------------------------------
    def start(self) -> LiveStates:
        self.thread = threading.Thread(target=self._follow, name="live-states", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _follow(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._read()
            except Exception:  # the broker went away: the pages show what is held
                log.exception("reading the worker's changelog failed; retrying in 5 s")
                self.stop_event.wait(5)

    def _read(self) -> None:
        consumer = KafkaConsumer(
            client_id="churnwatch-web",
            group_id=None,
            enable_auto_commit=False,
            **self.settings.kafka_consumer_options(),
        )
        try:
            tps: list[TopicPartition] = []
            while not tps and not self.stop_event.is_set():
                for topic in (self.states_topic, self.progress_topic):
                    partitions = consumer.partitions_for_topic(topic) or set()
                    tps += [TopicPartition(topic, p) for p in sorted(partitions)]
                if not tps:  # no worker has written yet
                    self.caught_up.set()
                    self.stop_event.wait(2)
            if not tps:
                return
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            while not self.stop_event.is_set():
                batches = consumer.poll(timeout_ms=500, max_records=5000)
                with self.lock:
                    for tp, messages in batches.items():
                        for message in messages:
                            self._take(tp.topic, message.key, message.value)
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in ends.items()
                ):
                    self.caught_up.set()
        finally:
            consumer.close()

    def _take(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if value is None or key is None:
            return
        if topic == self.states_topic:
            try:
                state, partition = decode_state(value, self.block)
            except (StateFormatError, ValueError, KeyError) as exc:
                log.warning("skipped a stored state the web cannot read: %s", exc)
                return
            self.partition_of[state.customer_id] = partition
            return
        name = key.decode("utf-8", "replace").strip('"')
        if name.isdigit():  # a partition's sweep progress (other keys: read floors)
            try:
                self.progress[int(name)] = float(json.loads(value))
            except (ValueError, TypeError):
                return

    # --- reading ------------------------------------------------------------------
    def _as_of(self, partition: int) -> float:
        swept = self.progress.get(partition, 0.0)
        if self.settings.clock.mode == "wall" or swept <= 0:
            return datetime.now(UTC).timestamp()
        return swept

    def customer(self, customer_id: str) -> LiveCustomer | None:
        """The customer's features and weekly history now; None if no worker holds it."""
        with self.lock:
            if customer_id not in self.block:
                return None
            state = self.block[customer_id]
            as_of = self._as_of(self.partition_of.get(customer_id, 0))
            columns = read_segmented(
                self.block, np.array([state.row]), as_of, self.settings.warnings
            )
            features = features_of(columns, 0)
            weeks, orders, revenue = weekly_history(state, as_of)
            return LiveCustomer(
                as_of=datetime.fromtimestamp(as_of, UTC),
                features=features,
                weeks=[datetime.fromtimestamp(int(w) * 7 * 86400, UTC) for w in weeks],
                orders=[int(v) for v in orders],
                revenue=[float(v) for v in revenue],
                open_invoices=[
                    (str(i[0]), float(i[1]), datetime.fromtimestamp(i[2], UTC))
                    for i in state.open_invoices
                ],
                open_complaints=[
                    (str(c[0]), datetime.fromtimestamp(c[1], UTC), int(c[2]), str(c[3]))
                    for c in state.open_complaints
                ],
                health=health_view(self.block, state.row),
            )

    def summaries(self, customer_ids: Iterable[str]) -> dict[str, Summary]:
        """Quadrant and 52-week revenue of each customer a worker holds (one read per
        partition clock, whatever the number of customers)."""
        out: dict[str, Summary] = {}
        with self.lock:
            by_clock: dict[float, list[int]] = {}
            for customer_id in customer_ids:
                row = self.block.rows.get(customer_id)
                if row is not None:
                    clock = self._as_of(self.partition_of.get(customer_id, 0))
                    by_clock.setdefault(clock, []).append(row)
            for as_of, rows in by_clock.items():
                picked: npt.NDArray[np.intp] = np.array(rows)
                columns = read_segmented(self.block, picked, as_of, self.settings.warnings)
                for i, row in enumerate(rows):
                    health = health_view(self.block, row)
                    out[self.block.customer_ids[row]] = Summary(
                        str(columns["quadrant"][i]),
                        float(columns["revenue_52w"][i]),
                        health["score"] if health else None,
                        health["trend_7d"] if health else None,
                        moved_parts(health),
                    )
        return out


#: A part of the health score that moved fewer points than this in a week is not
#: named in the inbox.
MOVED_POINTS = 5


def moved_parts(health: dict[str, Any] | None, most: int = 2) -> tuple[tuple[str, int], ...]:
    """The health parts that moved at least :data:`MOVED_POINTS` in a week, largest first."""
    if not health:
        return ()
    moved = [
        (family, part["moved"])
        for family, part in health["parts"].items()
        if part["moved"] is not None and abs(part["moved"]) >= MOVED_POINTS
    ]
    moved.sort(key=lambda fm: (-abs(fm[1]), fm[0]))
    return tuple(moved[:most])
