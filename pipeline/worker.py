"""The worker's Faust app with its agents registered: what ``churnwatch worker`` runs.

:mod:`pipeline.app` makes the app, its topics and tables; the agents
(:mod:`pipeline.track_customers`, and :mod:`pipeline.sweep_clock` on the wall
clock) register themselves on it here.
"""

from __future__ import annotations

from churnwatch.core.settings import Settings
from churnwatch.core.topics import Topic
from pipeline import sweep_clock, track_customers
from pipeline.app import Pipeline, faust_app, input_topics, raw_topic


def create_app(settings: Settings) -> Pipeline:
    """A fully wired Faust app for these settings (agents registered)."""
    app = faust_app(settings)
    pipeline = Pipeline(
        settings=settings,
        app=app,
        inputs=input_topics(app, settings),
        ticks=raw_topic(app, settings, settings.topic(Topic.TICKS)),
        warnings=raw_topic(app, settings, settings.topic(Topic.WARNINGS)),
        dead_letters=raw_topic(app, settings, settings.topic(Topic.DEAD_LETTERS)),
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
    track_customers.register(pipeline)
    if settings.clock.mode == "wall":
        sweep_clock.register(pipeline)
    return pipeline
