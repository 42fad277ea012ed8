"""Thousands of hostile messages mixed into a real history, through a real worker."""

from __future__ import annotations

import json
import random
from collections import Counter

from kafka import KafkaProducer

from churnwatch.bench.probes import rss_mb
from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import DEAD_LETTER_PAYLOAD_CHARS, DeadLetter, decode_event
from churnwatch.producers.simulator import parse_start, simulate
from tests.integration.conftest import (
    assert_same_as_batch,
    isolated_settings,
    read_topic,
    wait_processed,
)


def _order(c: str, m: str, **fields: object) -> str:
    return _event("order_placed", c, m, **{"order_id": "o", "amount": 3.0, **fields})


#: Each kind of hostile message: (topic, key, payload) for a customer id and a marker.
_HOSTILE = {
    "truncated JSON": lambda c, m: (Topic.ORDERS, c, f'{{"hostile": "{m}", "type": "order_'),
    "deeply nested JSON": lambda c, m: (
        Topic.ORDERS,
        c,
        f'{{"hostile": "{m}", "x": ' + "[" * 20_000 + "]" * 20_000 + "}",
    ),
    "1 MB string": lambda c, m: (
        Topic.PAYMENTS,
        c,
        _event("invoice_issued", c, m, invoice_id="I" * 900_000, amount=5.0, due_date=_DUE),
    ),
    "NaN amount": lambda c, m: (
        Topic.ORDERS,
        c,
        _order(c, m).replace('"amount": 3.0', '"amount": NaN'),
    ),
    "Infinity amount": lambda c, m: (
        Topic.ORDERS,
        c,
        _order(c, m).replace('"amount": 3.0', '"amount": Infinity'),
    ),
    "absurd amount": lambda c, m: (Topic.ORDERS, c, _order(c, m, amount=1e300)),
    "year 9999": lambda c, m: (Topic.ORDERS, c, _order(c, m, occurred_at="9999-01-01T00:00:00Z")),
    "year 1": lambda c, m: (
        Topic.ENGAGEMENT,
        c,
        _event("contact", c, m, direction="inbound", occurred_at="0001-01-01T00:00:00Z"),
    ),
    "number as string": lambda c, m: (Topic.ORDERS, c, _order(c, m, amount="12.5")),
    "non-UTF-8 bytes": lambda c, m: (
        Topic.COMPLAINTS,
        c,
        f'{{"hostile": "{m}", "x": "\udcff\udcfe"}}',
    ),
    "empty key": lambda c, m: (Topic.ORDERS, "", _order(c, m)),
    "10,000-character key": lambda c, m: (Topic.ORDERS, c * (10_000 // len(c)), _order(c, m)),
    "no key": lambda c, m: (Topic.ORDERS, None, _order(c, m)),
    "wrong topic": lambda c, m: (Topic.ENGAGEMENT, c, _order(c, m)),
}
_DUE = "2025-03-01T00:00:00Z"
_HUGE = {"1 MB string"}


def _event(kind: str, customer: str, marker: str, **fields: object) -> str:
    """An event that would apply if it got through: the marker is its event id."""
    base = {"type": kind, "event_id": marker, "customer_id": customer}
    return json.dumps({"occurred_at": "2025-02-01T00:00:00Z", **base, **fields})


def test_thousands_of_hostile_messages_are_dead_lettered_and_the_history_still_applies(
    broker, worker, tmp_path
):
    # The history is produced while the worker reads it: on Apache Kafka a topic
    # read to its end is reported so at once, and the event clock must wait a
    # moment for the older events still being written to it (docs/production.md).
    stream_settings = isolated_settings(
        broker, tmp_path / "worker", clock={"idle_topic_wait_seconds": 1}
    )
    events, truth = simulate(30, 17, parse_start("2024-10-07"), 300, 3, 0)
    customers = [t.customer_id for t in truth]
    rng = random.Random(5)
    hostile: list[tuple[str, str, Topic, str | None, bytes]] = []  # kind, marker, topic, key, value
    for n in range(2_100):
        kind = list(_HOSTILE)[n % len(_HOSTILE)]
        if kind in _HUGE and n >= 5 * len(_HOSTILE):
            kind = "truncated JSON"  # a few huge ones are enough to weigh on memory
        marker = f"hostile-{n}"
        topic, key, text = _HOSTILE[kind](rng.choice(customers), marker)
        value = text.encode("utf-8", "surrogateescape")  # \udcff -> the byte 0xff
        hostile.append((kind, marker, topic, key, value))
    # Interleaved: a hostile message after every few valid ones.
    messages: list[tuple[Topic, str | None, bytes]] = []
    queue = list(hostile)
    for i, e in enumerate(events):
        messages.append((e.topic, e.key, e.payload))
        if i % 2 == 0 and queue:
            kind, _, topic, key, value = queue.pop()
            messages.append((topic, key, value))
    messages += [(topic, key, value) for _, _, topic, key, value in queue]
    # Then, once those are processed, copies of earlier valid events at new offsets
    # (a history replayed twice): none may be applied a second time.
    copies = rng.sample(events, 300)

    proc = worker(stream_settings)
    producer = KafkaProducer(max_request_size=2_000_000, **stream_settings.kafka_client_options())
    for part in (messages, [(e.topic, e.key, e.payload) for e in copies]):
        for topic, key, value in part:
            producer.send(
                stream_settings.topic(topic),
                key=None if key is None else key.encode(),
                value=value,
            )
        producer.flush()
        wait_processed(
            stream_settings, len(messages) + len(copies) * (part is not messages), proc, timeout=240
        )
    producer.close()
    assert proc.poll() is None, "hostile input must not stop the worker"
    rss = rss_mb(proc.pid)
    assert 0 < rss < 800, f"worker RSS {rss:.0f} MB after hostile input"

    # Every hostile message is on the dead-letter topic once, with a reason.
    letters = [
        DeadLetter.model_validate_json(v) for v in read_topic(stream_settings, Topic.DEAD_LETTERS)
    ]
    by_marker = Counter(
        marker for letter in letters for marker in [_marker(letter.payload)] if marker
    )
    # the copies the worker could not tell from new events (the rest it skipped
    # as duplicates), refused with the reason, never applied
    copy_ids = {decode_event(e.payload).event_id for e in copies}
    refused = [letter for letter in letters if letter.error.startswith("possible copy")]
    assert refused and all(any(i in letter.payload for i in copy_ids) for letter in refused)
    assert len(letters) == len(hostile) + len(refused)
    assert sorted(by_marker) == sorted(marker for _, marker, *_ in hostile)
    assert set(by_marker.values()) == {1}
    assert all(letter.error for letter in letters)
    huge = [letter for letter in letters if letter.payload_bytes]
    assert huge and all(len(letter.payload) == DEAD_LETTER_PAYLOAD_CHARS for letter in huge)
    reasons = {kind: set() for kind in _HOSTILE}
    kind_of = {marker: kind for kind, marker, *_ in hostile}
    for letter in letters:
        if letter not in refused:
            reasons[kind_of[_marker(letter.payload)]].add(letter.error.split(":")[0])
    assert all(reasons.values()), f"every kind rejected: {reasons}"

    # ... and every valid event applied once, as if neither the hostile messages nor
    # the copies had been sent: the batch run's warnings and states.
    assert_same_as_batch(stream_settings, events)


def _marker(payload: str) -> str | None:
    start = payload.find("hostile-")
    if start < 0:
        return None
    end = start + len("hostile-")
    while end < len(payload) and payload[end].isdigit():
        end += 1
    return payload[start:end]
