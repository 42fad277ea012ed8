from __future__ import annotations

import json

import pytest

from churnwatch.docs import render_events_md
from churnwatch.pipeline.events import (
    TOPIC_OF_TYPE,
    DeadLetter,
    InvalidEvent,
    WarningRecord,
    decode_event,
    encode_event,
    example_records,
)
from tests.paths import REPO

EVENTS_MD = REPO / "docs" / "events.md"


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


def _order(**fields: object) -> bytes:
    base = {
        "type": "order_placed",
        "event_id": "e",
        "customer_id": "C1",
        "order_id": "o",
        "occurred_at": "2025-01-01T10:00:00Z",
        "amount": 5,
    }
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    "payload, reason",
    [
        (_order(order_id="x" * 1_000_000), "order_id: String should have at most 128"),
        (_order(occurred_at="9999-12-31T00:00:00Z"), "dated outside 1990-01-01 to 2100-01-01"),
        (_order(occurred_at="0001-01-01T00:00:00Z"), "dated outside 1990-01-01 to 2100-01-01"),
        (_order(amount="12.5"), "amount: Input should be a valid number"),
        (_order(amount=1e300), "amount: Input should be less than or equal to"),
        (_order(occurred_at=1735725600), "occurred_at: Input should be a valid datetime"),
        (_order().replace(b'"amount": 5', b'"amount": NaN'), "amount"),
        (_order().replace(b'"amount": 5', b'"amount": Infinity'), "amount"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b'{"type": "order_placed", "event_id": "\xff\xfe"', "JSON"),
        (
            json.dumps(
                {
                    "type": "invoice_issued",
                    "event_id": "e",
                    "customer_id": "C1",
                    "invoice_id": "I1",
                    "occurred_at": "2025-01-01T10:00:00Z",
                    "due_date": "2125-01-01T10:00:00Z",
                    "amount": 5,
                }
            ).encode(),
            "due_date is more than ten years from occurred_at",
        ),
    ],
    ids=[
        "1 MB id",
        "year 9999",
        "year 1",
        "number as string",
        "absurd amount",
        "epoch number as time",
        "NaN",
        "Infinity",
        "deeply nested",
        "truncated",
        "due in a century",
    ],
)
def test_hostile_events_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(payload, b"C1")


def test_a_dead_letter_copies_a_huge_message_only_in_part():
    from churnwatch.pipeline.events import DEAD_LETTER_PAYLOAD_CHARS, dead_letter_for

    huge = b'{"junk": "' + b"\xff" * 2_000_000 + b'"}'
    letter = dead_letter_for("t", 1, 7, b"k" * 10_000, huge, "too big")
    assert len(letter.payload) == DEAD_LETTER_PAYLOAD_CHARS
    assert letter.payload_bytes == len(huge)
    assert len(letter.key or "") == 1_000
    assert len(encode_event(letter)) < 200_000  # always small enough to send
    small = dead_letter_for("t", 1, 8, None, b"{}", "empty")
    assert (small.payload, small.payload_bytes, small.key) == ("{}", None, None)


def test_key_must_match_customer(event_factory):
    with pytest.raises(InvalidEvent, match="does not match customer_id"):
        decode_event(encode_event(event_factory("order", customer_id="C1")), b"C2")


def test_events_doc_is_generated_from_the_declarations():
    assert EVENTS_MD.read_text(encoding="utf-8") == render_events_md(), (
        "docs/events.md is stale: run `churnwatch docs events`"
    )
