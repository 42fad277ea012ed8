"""``churnwatch check consistency``: the live state table against a batch recomputation.

Samples customers from the worker's table (read from its changelog topic, as a
new worker would restore it), recomputes each one's state from the archived
events with the same functions, and compares the features both give as of the
same moment. A customer whose live state has not yet seen the same latest
events as the archive (or the other way round) is counted as lagging, not as
a mismatch. The result is printed and set as metrics.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from kafka import KafkaConsumer, TopicPartition

from churnwatch.consumers.archiver import read_archive
from churnwatch.core.settings import Settings
from churnwatch.core.topics import Table, changelog_topic, end_offsets
from churnwatch.pipeline import metrics
from churnwatch.pipeline.apply import apply_event
from churnwatch.pipeline.events import CustomerEvent
from churnwatch.pipeline.features import read_features
from churnwatch.pipeline.state import CustomerState, StateBlock, new_state, to_epoch
from churnwatch.pipeline.state_format import decode_state


@dataclass
class ConsistencyReport:
    sampled: int = 0
    compared: int = 0
    lagging: int = 0
    mismatched: dict[str, list[str]] = field(default_factory=dict)  # customer -> features


def live_states(settings: Settings) -> StateBlock:
    """The worker's table as its changelog has it (the last record per customer)."""
    consumer = KafkaConsumer(group_id=None, **settings.kafka_consumer_options())
    name = changelog_topic(settings, Table.CUSTOMER_STATE)
    tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
    states = StateBlock()
    if tps:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = end_offsets(settings, tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    if message.value is None:
                        continue
                    decode_state(message.value, states)
    consumer.close()
    return states


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def compare(
    live: Mapping[str, CustomerState],
    events: list[CustomerEvent],
    settings: Settings,
    sample: int,
    seed: int = 0,
) -> ConsistencyReport:
    """Compare ``sample`` customers of ``live`` with their state rebuilt from ``events``."""
    by_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
    for event in events:
        by_customer[event.customer_id].append(event)
    chosen = random.Random(seed).sample(sorted(live), min(sample, len(live)))  # noqa: S311
    report = ConsistencyReport(sampled=len(chosen))
    for customer_id in chosen:
        batch = new_state(customer_id)
        history = sorted(by_customer.get(customer_id, []), key=lambda e: e.occurred_at)
        for event in history:
            apply_event(batch, event)
        state = live[customer_id]
        if set(batch.recent_event_ids) != set(state.recent_event_ids) or not history:
            report.lagging += 1  # one side has events the other has not seen yet
            continue
        as_of = to_epoch(history[-1].occurred_at) + 1.0
        t = settings.warnings.for_segment(state.segment)  # the windows the worker uses
        live_features = asdict(
            read_features(state, as_of, t.recent_weeks, t.baseline_weeks, t.high_value_revenue)
        )
        batch_features = asdict(
            read_features(batch, as_of, t.recent_weeks, t.baseline_weeks, t.high_value_revenue)
        )
        differ = [k for k, v in live_features.items() if not _same(v, batch_features[k])]
        report.compared += 1
        if differ:
            report.mismatched[customer_id] = differ
    metrics.CONSISTENCY_COMPARED.set(report.compared)
    metrics.CONSISTENCY_MISMATCHES.set(len(report.mismatched))
    metrics.CONSISTENCY_LAGGING.set(report.lagging)
    return report


def check_consistency(settings: Settings, sample: int, seed: int = 0) -> ConsistencyReport:
    return compare(
        live_states(settings), read_archive(settings.archive.path), settings, sample, seed
    )
