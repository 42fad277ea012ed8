"""Every Prometheus metric of churnwatch, declared once (``churnwatch_`` prefix), in
the registry of the process that owns it.

Labels are low-cardinality: never a customer id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)


def _registry() -> CollectorRegistry:
    """A process kind's metrics, with the usual process, Python and GC figures."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# Each process exports what it owns: a dispatcher has no consumer lag, a worker
# no outbox, and a metric a process does not own is absent there, never a 0
# that a dashboard would add up or an alert would fire on.
WORKER = _registry()  # churnwatch worker
ALERTS = _registry()  # churnwatch alerts run
ARCHIVE = _registry()  # churnwatch archive
CHECK = _registry()  # churnwatch check consistency --every

EVENTS_CONSUMED = Counter(
    "churnwatch_events_consumed_total",
    "Messages read by the worker, by topic.",
    ["topic"],
    registry=WORKER,
)
EVENTS_DUPLICATE = Counter(
    "churnwatch_events_duplicate_total",
    "Events seen before (redelivery) and skipped.",
    registry=WORKER,
)
INVALID_EVENTS = Counter(
    "churnwatch_invalid_events_total",
    "Messages rejected by the worker, by reason.",
    ["reason"],
    registry=WORKER,
)
DEAD_LETTERS = Counter(
    "churnwatch_dead_letters_total", "Messages sent to the dead-letter topic.", registry=WORKER
)
WARNINGS = Counter(
    "churnwatch_warnings_total",
    "Warning records emitted, by type, status (opened/resolved) and severity.",
    ["warning_type", "status", "severity"],
    registry=WORKER,
)
SWEEPS = Counter(
    "churnwatch_sweeps_total", "Sweeps over silent customers, by clock.", ["clock"], registry=WORKER
)
CUSTOMERS_TRACKED = Gauge(
    "churnwatch_customers_tracked", "Customers in this worker's state table.", registry=WORKER
)
EVENT_TIME_WATERMARK = Gauge(
    "churnwatch_event_time_watermark_seconds",
    "Newest event time seen by this worker (UTC epoch seconds).",
    registry=WORKER,
)
EVENTS_WAITING = Gauge(
    "churnwatch_events_waiting",
    "Events held until the event-time watermark passes them (topics read at different speeds).",
    registry=WORKER,
)
LATE_EVENTS = Counter(
    "churnwatch_late_events_total",
    "Events older than a sweep already run (beyond the allowed lateness): applied, counted.",
    registry=WORKER,
)
MODEL = Info(
    "churnwatch_model",
    "The churn model this worker serves (version 'none': rules only).",
    registry=WORKER,
)
MODEL_REFUSED = Counter(
    "churnwatch_model_refused_total",
    "Promoted models that could not load and were refused.",
    registry=WORKER,
)
NOTIFICATIONS = Counter(
    "churnwatch_notifications_total",
    "Notifications the delivery stages decided on when due, by kind and outcome "
    "(sent, snoozed, inhibited, capped, superseded).",
    ["kind", "status"],
    registry=ALERTS,
)
NOTIFICATIONS_SENT = Counter(
    "churnwatch_notifications_sent_total",
    "Notifications delivered, by channel.",
    ["channel"],
    registry=ALERTS,
)
NOTIFICATIONS_FAILED = Counter(
    "churnwatch_notifications_failed_total",
    "Delivery attempts that failed (retried later), by channel.",
    ["channel"],
    registry=ALERTS,
)
OUTBOX_DEPTH = Gauge(
    "churnwatch_outbox_depth", "Notifications waiting to be delivered.", registry=ALERTS
)
WARNING_LATENCY = Histogram(
    "churnwatch_warning_latency_seconds",
    "From the event that let a sweep run to the warning it emitted: since its event "
    "time (large in replays), and since the broker received it.",
    ["since"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400, 604800, 31536000),
    registry=WORKER,
)
PROCESSING_LAG = Gauge(
    "churnwatch_processing_lag_seconds",
    "Wall-clock time minus the event time of the newest event processed.",
    registry=WORKER,
)
CONSUMER_LAG = Gauge(
    "churnwatch_consumer_lag_messages",
    "Messages not yet read, by input topic and partition.",
    ["topic", "partition"],
    registry=WORKER,
)
OPEN_EPISODES = Gauge(
    "churnwatch_open_episodes",
    "Open warning episodes in this worker's partitions, by type.",
    ["warning_type"],
    registry=WORKER,
)
CHURN_SCORE = Histogram(
    "churnwatch_churn_score",
    "Churn probabilities given in sweeps (every customer, every sweep).",
    buckets=tuple(i / 10 for i in range(1, 11)),
    registry=WORKER,
)
FEATURE_DRIFT = Gauge(
    "churnwatch_feature_drift_psi",
    "Population stability index of a main model input: the last sweep's customers "
    "against the training rows saved in the model card.",
    ["feature"],
    registry=WORKER,
)
ARCHIVE_FILES = Counter(
    "churnwatch_archive_files_total", "Parquet files the archiver wrote.", registry=ARCHIVE
)
ARCHIVE_BYTES = Counter(
    "churnwatch_archive_bytes_total", "Bytes the archiver wrote.", registry=ARCHIVE
)
ARCHIVE_EVENTS = Counter(
    "churnwatch_archive_events_total", "Events archived (each event id once).", registry=ARCHIVE
)
# Labelled by the served model's version, so a worker without a model exports
# neither (an unlabelled gauge would say 0: "trained in 1970", "nothing at risk").
MODEL_CREATED = Gauge(
    "churnwatch_model_created_timestamp_seconds",
    "When the served churn model was trained (UTC epoch seconds; absent: rules only).",
    ["version"],
    registry=WORKER,
)
EXPECTED_LOSS = Gauge(
    "churnwatch_expected_loss",
    "Sum of churn probability x 52-week revenue over this worker's customers "
    "(value at risk; the last sweep of each partition; absent without a model).",
    ["version"],
    registry=WORKER,
)
CONSISTENCY_COMPARED = Gauge(
    "churnwatch_consistency_compared",
    "Customers whose live features the last consistency check compared with a batch rebuild.",
    registry=CHECK,
)
CONSISTENCY_MISMATCHES = Gauge(
    "churnwatch_consistency_mismatches",
    "Customers whose live features differ from the batch rebuild (last check).",
    registry=CHECK,
)
CONSISTENCY_LAGGING = Gauge(
    "churnwatch_consistency_lagging",
    "Sampled customers not compared: live state and archive had not seen the same events yet.",
    registry=CHECK,
)


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one pass (a sweep scores every
    customer: one call each cost more than the scoring). Same buckets and sum."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return
    bounds = np.asarray(histogram._upper_bounds)  # noqa: SLF001 - the buckets observe() fills
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):  # noqa: SLF001
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))  # noqa: SLF001
