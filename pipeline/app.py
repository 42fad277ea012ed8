"""Builds the one ``faust.App`` of churnwatch from the settings.

Run the worker with ``churnwatch worker``; this module only wires things up:
topics and the state table here, agents in their own modules.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import faust
from faust.types import TableT, TopicT

from churnwatch.settings import Settings
from pipeline.events import EVENT_TOPICS, Topic


@dataclass(frozen=True)
class Pipeline:
    """The app and the channels its agents use."""

    settings: Settings
    app: faust.App
    inputs: TopicT  # every customer-event topic plus the tick topic
    ticks: TopicT
    warnings: TopicT
    dead_letters: TopicT
    states: TableT[str, bytes]  # customer_id -> pipeline.features.encode_state()
    sweep_progress: TableT[str, float]  # str(partition) -> last sweep boundary (event clock)


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    k = settings.kafka
    context = (
        ssl.create_default_context(cafile=k.ssl_cafile) if "SSL" in k.security_protocol else None
    )
    if k.sasl_mechanism:
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            mechanism=k.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings) -> Pipeline:
    """A fully wired Faust app for these settings (agents registered)."""
    w = settings.worker
    app = faust.App(
        w.app_id,
        broker=";".join(f"kafka://{s}" for s in settings.kafka.bootstrap_servers.split(",")),
        broker_credentials=_credentials(settings),
        store=w.store,
        datadir=w.data_dir,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        broker_session_timeout=w.broker_session_timeout,
        broker_rebalance_timeout=w.broker_rebalance_timeout,
        broker_heartbeat_interval=w.broker_heartbeat_interval,
        table_standby_replicas=w.standby_replicas,
        processing_guarantee="at_least_once",
        # Prefetch enough for several batches: with Faust's default (4,096) the
        # worker waits for fetches between batches.
        stream_buffer_maxsize=max(4096, 16 * w.batch_size),
        broker_max_poll_records=w.batch_size,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )

    def raw_topic(*names: str) -> TopicT:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.kafka.partitions,
        )

    pipeline = Pipeline(
        settings=settings,
        app=app,
        inputs=raw_topic(*(settings.topic(t) for t in (*EVENT_TOPICS, Topic.TICKS))),
        ticks=raw_topic(settings.topic(Topic.TICKS)),
        warnings=raw_topic(settings.topic(Topic.WARNINGS)),
        dead_letters=raw_topic(settings.topic(Topic.DEAD_LETTERS)),
        states=app.Table(
            "customer_state",
            default=None,
            partitions=settings.kafka.partitions,
            value_type=bytes,  # stored as given: pipeline.features.encode_state's format
        ),
        sweep_progress=app.Table(
            "sweep_progress", default=float, partitions=settings.kafka.partitions
        ),
    )
    from pipeline import sweep_clock, track_customers

    track_customers.register(pipeline)
    if settings.clock.mode == "wall":
        sweep_clock.register(pipeline)
    return pipeline
