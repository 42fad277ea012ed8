"""The worker's Faust app with its agents registered: what ``churnwatch worker`` runs.

:mod:`pipeline.app` makes the app, its topics and tables; the agent
(:mod:`pipeline.track_customers`, with its wall-clock timer) registers itself
on it here.
"""

from __future__ import annotations

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Table, Topic
from churnwatch.pipeline import track_customers
from churnwatch.pipeline.app import Pipeline, faust_app, input_topics, raw_topic


def store_options(settings: Settings) -> dict[str, int]:
    """RocksDB options of each table's per-partition database (ignored by memory://).

    The worker serves its state from memory and only writes the store (it reads
    it back at start), so Faust's defaults (64 MB write buffers, three of them,
    and a 2 GB block cache per database) only make its memory grow with the
    bytes written until a flush: up to about 1.5 GB for two tables of four
    partitions. ``worker.store_buffer_mb`` bounds each buffer and the cache.
    """
    size = settings.worker.store_buffer_mb * 1024 * 1024
    return {"write_buffer_size": size, "max_write_buffer_number": 2, "block_cache_size": size}


def create_app(settings: Settings) -> Pipeline:
    """A fully wired Faust app for these settings (agents registered)."""
    app = faust_app(settings)
    pipeline = Pipeline(
        settings=settings,
        app=app,
        inputs=input_topics(app, settings),
        warnings=raw_topic(app, settings, settings.topic(Topic.WARNINGS)),
        dead_letters=raw_topic(app, settings, settings.topic(Topic.DEAD_LETTERS)),
        health=raw_topic(app, settings, settings.topic(Topic.HEALTH)),
        states=app.Table(
            Table.CUSTOMER_STATE.value,
            default=None,
            partitions=settings.kafka.partitions,
            value_type=bytes,  # stored as given: pipeline.state_format.encode_state's format
            options=store_options(settings),
        ),
        sweep_progress=app.Table(
            Table.SWEEP_PROGRESS.value,
            default=float,
            partitions=settings.kafka.partitions,
            options=store_options(settings),
        ),
    )
    track_customers.register(pipeline)
    return pipeline
