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
