"""Builds the one ``faust.App`` of churnwatch from the settings.

Run the worker with ``churnwatch worker``. This module makes the app, its
topics and its tables; :mod:`pipeline.worker` puts them together with the
agents (which import this module, never the other way round).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import faust
from faust.types import TableT, TopicT

from churnwatch.core.settings import Settings
from churnwatch.core.topics import EVENT_TOPICS
from churnwatch.pipeline.faust_adapter import TableManager, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pipeline:
    """The app and the channels its agents use."""

    settings: Settings
    app: faust.App
    inputs: TopicT  # every customer-event topic
    warnings: TopicT
    dead_letters: TopicT
    health: TopicT  # the account feed: health band changes (pipeline.events.AccountChange)
    states: TableT[str, bytes]  # customer_id -> pipeline.state_format.encode_state()
    # str(partition) -> last sweep boundary (event clock); "read:topic:partition" -> the
    # offset after the last message whose effects are stored (pipeline.track_customers)
    sweep_progress: TableT[str, float]


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


def event_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``"uvloop"`` (when installed), else None: asyncio's own."""
    if kind != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not built for this platform: the standard loop works too
        log.warning("uvloop is not installed: running on asyncio's own event loop")
        return None
    return uvloop.new_event_loop


def use_event_loop(kind: str) -> None:
    """Make the next event loop created (Faust's worker's) one of ``kind``."""
    if event_loop_factory(kind) is not None:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def fewer_gc_passes() -> None:
    """Set the garbage collector for a worker's steady state (call once started up).

    The objects made so far (modules, the model, settings) are frozen out of
    every collection, and a young-generation pass waits for 50,000 new objects
    instead of 700: a worker allocates a few objects per message and frees
    them at once, so each pass found little and the full passes walked
    everything. On the benchmark the collector's time fell from 2.8 s to
    0.3 s of a 25 s drain. Cycles are still collected, just less often.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def faust_app(settings: Settings) -> faust.App:
    """A Faust app with the worker's broker, consumer and store settings, no agents."""
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
        processing_guarantee=w.processing_guarantee,
        broker_max_poll_records=w.batch_size,  # one fetch is one batch
        consumer_auto_offset_reset="earliest",
        # The input comes in batches (pipeline.faust_adapter.on_batches), never
        # tracked as in flight: events held unacked in the reorder buffer
        # until the watermark passes them do not hold up a rebalance or a
        # stop (waiting for them would wait for good). Not acked, they are
        # read again from the committed offset, and applying is idempotent
        # (event ids, warning ids).
        stream_wait_empty=False,
        web_enabled=False,
        autodiscover=False,
        # A partition whose local store is ahead of its changelog is rebuilt
        # from the changelog instead of refusing to start (pipeline.faust_adapter).
        TableManager=TableManager,
    )
    app.transport = Transport(app.conf.broker_consumer, app)
    return app


def raw_topic(app: faust.App, settings: Settings, *names: str) -> TopicT:
    """Topics whose keys and values the agents get as bytes (they decode them)."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
    )


def input_topics(app: faust.App, settings: Settings) -> TopicT:
    """Every customer-event topic."""
    return raw_topic(app, settings, *(settings.topic(t) for t in EVENT_TOPICS))
