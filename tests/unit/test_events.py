from __future__ import annotations

import json

import pytest

from churnwatch.docs import EVENTS_MD, render_events_md
from pipeline.events import (
    TOPIC_OF_TYPE,
    DeadLetter,
    InvalidEvent,
    WarningRecord,
    decode_event,
    encode_event,
    example_records,
)


@pytest.mark.parametrize(
    "name, example", [(n, e) for n, e in example_records().items() if "type" in e]
)
def test_every_documented_example_decodes(name, example):
    event = decode_event(json.dumps(example).encode(), b"C0042")
    assert event.type in TOPIC_OF_TYPE
    assert decode_event(encode_event(event)) == event


def test_output_examples_validate():
    examples = example_records()
    WarningRecord.model_validate(examples["WarningRecord"])
    DeadLetter.model_validate(examples["DeadLetter"])


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "Invalid JSON"),
        (b'{"type": "order_placed"}', "event_id: Field required"),
        (b'{"type": "teleport"}', "does not match any of the expected tags"),
        (
            b'{"type": "order_placed", "event_id": "e", "customer_id": "C1", "order_id": "o",'
            b' "occurred_at": "2025-01-01T10:00:00", "amount": 5}',
            "timezone info",
        ),
        (
            b'{"type": "order_placed", "event_id": "e", "customer_id": "C1", "order_id": "o",'
            b' "occurred_at": "2025-01-01T10:00:00Z", "amount": -5}',
            "amount: Input should be greater than or equal to 0",
        ),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(payload)


def test_key_must_match_customer(event_factory):
    with pytest.raises(InvalidEvent, match="does not match customer_id"):
        decode_event(encode_event(event_factory("order", customer_id="C1")), b"C2")


def test_events_doc_is_generated_from_the_declarations():
    assert EVENTS_MD.read_text(encoding="utf-8") == render_events_md(), (
        "docs/events.md is stale: run `churnwatch docs events`"
    )
