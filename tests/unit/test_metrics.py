"""Metric helpers (pure units: a histogram outside any registry)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from churnwatch.pipeline.metrics import observe_many


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_fills_the_buckets_and_sum_as_observe_does():
    buckets = tuple(i / 10 for i in range(1, 11))
    one = Histogram("one", "", buckets=buckets, registry=CollectorRegistry())
    many = Histogram("many", "", buckets=buckets, registry=CollectorRegistry())
    values = np.concatenate([np.random.default_rng(3).random(500), [0.1, 0.2, 1.0, 0.0, 7.5]])
    for value in values:
        one.observe(float(value))
    observe_many(many, values)
    observe_many(many, [])  # nothing observed: nothing changes
    got = {(name.replace("many", "one"), le): v for (name, le), v in _samples(many).items()}
    expected = _samples(one)
    assert got.keys() == expected.keys()
    total = ("one_sum", "")
    assert {k: v for k, v in got.items() if k != total} == {
        k: v for k, v in expected.items() if k != total
    }
    assert np.isclose(got[total], expected[total])  # (added in another order)
    assert got[("one_count", "")] == len(values)
