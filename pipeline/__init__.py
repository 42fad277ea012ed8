"""The worker: event contracts, per-customer state, rules, scoring and the Faust agent.

Above the core (``churnwatch.core``), below producers, consumers, models and
the CLI. The pure modules (``state``, ``apply``, ``features``, ``rules``,
``episodes``, ``screening``, ``scoring``, ``ordering``, ``processing``) never
import Faust, so the batch jobs in ``models`` run the same code as the stream;
``app``, ``track_customers``, ``partition_task``, ``storing`` and ``worker``
are the Faust side, and ``faust_adapter`` the one module that touches Faust's
internals. docs/architecture.md has the picture.
"""
