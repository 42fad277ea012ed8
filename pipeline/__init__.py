"""The worker: event contracts, per-customer state, rules, scoring and the Faust agent.

Above the core (``churnwatch.core``), below producers, consumers, models and
the CLI. ``features``, ``rules``, ``processing`` and ``scoring`` never import
Faust, so the batch jobs in ``models`` run the same code as the stream.
"""
