"""Event factories for tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from churnwatch.pipeline.events import (
    ComplaintOpened,
    Contact,
    InvoiceIssued,
    OrderPlaced,
    PaymentReceived,
)
from churnwatch.pipeline.state import STATE_DTYPE, STREAM_FIELDS, StateBlock

T0 = datetime(2025, 1, 2, 9, 0, tzinfo=UTC)

_ids = itertools.count()


def make_event(kind: str, customer_id: str = "C1", at: datetime = T0, **fields: Any) -> Any:
    """A valid event of ``kind`` with sensible defaults; ``fields`` override them."""
    base: dict[str, Any] = {
        "event_id": f"test-{next(_ids)}",
        "customer_id": customer_id,
        "occurred_at": at,
    }
    if kind == "order":
        return OrderPlaced(**{**base, "order_id": f"O{next(_ids)}", "amount": 1000.0, **fields})
    if kind == "invoice":
        defaults = {"invoice_id": "I1", "amount": 1000.0, "due_date": at + timedelta(days=30)}
        return InvoiceIssued(**{**base, **defaults, **fields})
    if kind == "payment":
        return PaymentReceived(**{**base, "invoice_id": "I1", "amount": 1000.0, **fields})
    if kind == "contact":
        return Contact(**{**base, "channel": "call", "direction": "inbound", **fields})
    if kind == "complaint":
        defaults = {"complaint_id": "T1", "category": "product", "severity": 2}
        return ComplaintOpened(**{**base, **defaults, **fields})
    raise ValueError(kind)


# Every field of the stored record but the segment's code, which numbers segments
# in the order a block first met them (compared by name instead), and where the
# stream stood when it was stored (the batch run has no stream).
FIELDS = [n for n in STATE_DTYPE.names or () if n != "segment_code" and n not in STREAM_FIELDS]


def assert_same_states(restored: StateBlock, expected: StateBlock) -> None:
    """The same customers with the same records (a stream's states against a batch
    run's, or two runs' against each other)."""
    import numpy as np

    assert sorted(restored) == sorted(expected)
    for customer in expected:
        ours, theirs = restored.rows[customer], expected.rows[customer]
        for name in FIELDS:
            np.testing.assert_array_equal(
                restored.data[name][ours], expected.data[name][theirs], err_msg=name
            )
        assert restored.invoices.get(ours) == expected.invoices.get(theirs)
        assert restored.complaints.get(ours) == expected.complaints.get(theirs)
        assert restored.owners[ours] == expected.owners[theirs]
        assert restored[customer].segment == expected[customer].segment
