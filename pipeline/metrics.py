"""Every Prometheus metric of churnwatch, declared once (``churnwatch_`` prefix).

Labels are low-cardinality: never a customer id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Info

EVENTS_CONSUMED = Counter(
    "churnwatch_events_consumed_total", "Messages read by the worker, by topic.", ["topic"]
)
EVENTS_DUPLICATE = Counter(
    "churnwatch_events_duplicate_total", "Events seen before (redelivery) and skipped."
)
INVALID_EVENTS = Counter(
    "churnwatch_invalid_events_total", "Messages rejected by the worker, by reason.", ["reason"]
)
DEAD_LETTERS = Counter("churnwatch_dead_letters_total", "Messages sent to the dead-letter topic.")
WARNINGS = Counter(
    "churnwatch_warnings_total",
    "Warning records emitted, by type, status (opened/resolved) and severity.",
    ["warning_type", "status", "severity"],
)
SWEEPS = Counter("churnwatch_sweeps_total", "Sweeps over silent customers, by clock.", ["clock"])
CUSTOMERS_TRACKED = Gauge("churnwatch_customers_tracked", "Customers in this worker's state table.")
EVENT_TIME_WATERMARK = Gauge(
    "churnwatch_event_time_watermark_seconds",
    "Newest event time seen by this worker (UTC epoch seconds).",
)
EVENTS_WAITING = Gauge(
    "churnwatch_events_waiting",
    "Events held until the event-time watermark passes them (topics read at different speeds).",
)
LATE_EVENTS = Counter(
    "churnwatch_late_events_total",
    "Events older than a sweep already run (beyond the allowed lateness): applied, counted.",
)
MODEL = Info("churnwatch_model", "The churn model this worker serves (version 'none': rules only).")
MODEL_REFUSED = Counter(
    "churnwatch_model_refused_total", "Promoted models that could not load and were refused."
)
NOTIFICATIONS = Counter(
    "churnwatch_notifications_total",
    "Notifications recorded by the dispatcher, by kind and first status "
    "(pending, snoozed, inhibited, capped).",
    ["kind", "status"],
)
NOTIFICATIONS_SENT = Counter(
    "churnwatch_notifications_sent_total", "Notifications delivered, by channel.", ["channel"]
)
NOTIFICATIONS_FAILED = Counter(
    "churnwatch_notifications_failed_total",
    "Delivery attempts that failed (retried later), by channel.",
    ["channel"],
)
OUTBOX_DEPTH = Gauge("churnwatch_outbox_depth", "Notifications waiting to be delivered.")
