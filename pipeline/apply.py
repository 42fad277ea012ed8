"""Applying events to customers' states (pure: no I/O, no Faust).

``apply_event`` folds one event into a customer's state; the Faust agent and
every batch job call it, so streaming and batch cannot drift. An event whose
id the customer has seen recently is skipped; one that may be a copy of an
older event is refused (:class:`PossibleCopy`).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from churnwatch.pipeline.events import (
    ComplaintOpened,
    ComplaintResolved,
    Contact,
    CreditNote,
    CustomerEvent,
    CustomerUpdated,
    InvoiceIssued,
    OrderPlaced,
    PaymentReceived,
)
from churnwatch.pipeline.state import (
    BIG_ORDER_CAP,
    DAY,
    EWMA_ALPHA,
    MAX_OPEN_COMPLAINTS,
    MAX_OPEN_INVOICES,
    MAX_WEEKLY_COUNT,
    RECENT_EVENT_IDS,
    RING_WEEKS,
    RINGS,
    SHORT_RING_WEEKS,
    SHORT_RINGS,
    CustomerState,
    to_epoch,
    week_of,
)


def _advance_ring(state: CustomerState, week: int) -> None:
    """Move the rings forward to ``week``, zeroing the buckets that roll over."""
    col, row = state.block.col, state.row
    head = int(col["week_head"][row])
    if head < 0:
        col["week_head"][row] = week
        return
    if week <= head:
        return
    if week == head + 1:  # the usual case: one new week
        for name in RINGS:
            col[name][row, week % RING_WEEKS] = 0
        for name in SHORT_RINGS:
            col[name][row, week % SHORT_RING_WEEKS] = 0
    else:
        weeks = np.arange(head + 1, min(week, head + RING_WEEKS) + 1)
        for name in RINGS:
            col[name][row, weeks % RING_WEEKS] = 0
        for name in SHORT_RINGS:
            col[name][row, weeks % SHORT_RING_WEEKS] = 0
    col["week_head"][row] = week


def _slot_for(state: CustomerState, ts: float, ring_weeks: int = RING_WEEKS) -> int | None:
    """Ring slot for an event at ``ts``; None if older than the ring holds."""
    week = week_of(ts)
    _advance_ring(state, week)
    if week <= int(state.block.col["week_head"][state.row]) - ring_weeks:
        return None
    return week % ring_weeks


class PossibleCopy(ValueError):
    """An event the worker cannot tell from a copy of one it applied long ago, so it
    does not apply it: its id is not among the customer's last
    :data:`~pipeline.state.RECENT_EVENT_IDS`, but it is no newer than one that left
    them, and older than the customer's newest event."""


def _seen_before(state: CustomerState, event_id: str, ts: float) -> bool:
    """Whether this event was applied before (its id is in the customer's ring of
    recent ids); else records it there (and its time as the newest, if it is).
    Raises :class:`PossibleCopy` when it may be a copy of an event the ring no
    longer holds.

    A copy carries its original's id and time. Events are applied about in
    event-time order, so the ids that left the ring are of the customer's older
    events; a new event no newer than the newest of those, and older than the
    customer's newest, is one that came after more than the ring's worth of the
    customer's later events: a copy re-sent (a history replayed twice), or
    history back-filled out of order. Refused, never applied twice."""
    col, row = state.block.col, state.row
    digest = zlib.crc32(event_id.encode("utf-8"))
    count = int(col["event_ids_count"][row])
    ids = col["event_ids"][row]
    if digest in (ids.tolist() if count >= RECENT_EVENT_IDS else ids[:count].tolist()):
        return True
    times = col["event_id_times"][row]
    newest = col["last_event_at"]
    if count >= RECENT_EVENT_IDS:  # (before the ring is full, nothing has left it)
        evicted = float(col["evicted_event_at"][row])
        if evicted and math.floor(ts) <= evicted and ts < newest[row]:
            raise PossibleCopy(
                f"possible copy: event {event_id!r} at {ts:.0f} is not among this customer's "
                f"last {RECENT_EVENT_IDS} events but no newer than one of them that left "
                "(a re-sent copy, or history back-filled out of order); not applied"
            )
        slot = count % RECENT_EVENT_IDS
        leaving = float(times[slot])
        if leaving > evicted:
            col["evicted_event_at"][row] = leaving
    else:
        slot = count
    ids[slot] = digest
    times[slot] = math.floor(ts)
    col["event_ids_count"][row] = count + 1
    if ts > newest[row]:
        newest[row] = ts
    return False


def _add_count(state: CustomerState, ring: str, slot: int) -> None:
    column = state.block.col[ring]
    column[state.row, slot] = min(MAX_WEEKLY_COUNT, int(column[state.row, slot]) + 1)


def apply_event(state: CustomerState, event: CustomerEvent) -> bool:
    """Fold ``event`` into ``state``. Returns False for a duplicate (already applied);
    raises :class:`PossibleCopy` for an event it cannot tell from one (see
    ``_seen_before``)."""
    ts = event.epoch
    if _seen_before(state, event.event_id, ts):
        return False
    first_seen = state.first_seen_at
    if not first_seen or ts < first_seen:
        state.first_seen_at = ts
    if isinstance(event, OrderPlaced):
        _apply_order(state, ts, event.amount)
    elif isinstance(event, InvoiceIssued):
        _apply_invoice(state, event.invoice_id, event.amount, to_epoch(event.due_date), ts)
    elif isinstance(event, PaymentReceived | CreditNote):
        _apply_payment(state, event.invoice_id, event.amount, ts)
    elif isinstance(event, ComplaintOpened):
        _apply_complaint(state, event, ts)
    elif isinstance(event, ComplaintResolved):
        state.open_complaints = [c for c in state.open_complaints if c[0] != event.complaint_id]
    elif isinstance(event, Contact):
        state.last_contact_at = max(state.last_contact_at, ts)
        if event.direction == "inbound":
            _apply_inbound_contact(state, ts)
        else:
            slot = _slot_for(state, ts, SHORT_RING_WEEKS)
            if slot is None:
                state.late_events += 1
            else:
                _add_count(state, "outbound_contacts", slot)
    elif isinstance(event, CustomerUpdated):
        state.name = event.name
        state.owner = event.owner
        state.segment = event.segment
        state.region = event.region
        state.credit_limit = event.credit_limit
    return True


def _apply_order(state: CustomerState, ts: float, amount: float) -> None:
    log_amount = math.log1p(amount)
    orders_total = state.orders_total
    typical = state.typical_log_amount
    cap = BIG_ORDER_CAP * math.expm1(typical) if orders_total else amount
    if orders_total == 0:
        state.typical_log_amount = log_amount
        state.first_order_at = ts
    else:
        # Winsorised, so one huge order barely moves what "typical" means.
        limit = math.log(BIG_ORDER_CAP)
        step = max(-limit, min(limit, log_amount - typical))
        state.typical_log_amount = typical + EWMA_ALPHA * step
    gap_days = 0.0
    last_order_at = state.last_order_at
    if ts > last_order_at:
        if last_order_at:
            gap_days = (ts - last_order_at) / DAY
            mean_gap = state.mean_order_gap_days
            if mean_gap == 0:
                state.mean_order_gap_days = gap_days
            else:
                deviation = gap_days - mean_gap
                state.mean_order_gap_days = mean_gap + EWMA_ALPHA * deviation
                state.order_gap_var = (1 - EWMA_ALPHA) * (
                    state.order_gap_var + EWMA_ALPHA * deviation * deviation
                )
        state.last_order_at = ts
    state.first_order_at = min(state.first_order_at, ts)
    state.orders_total = orders_total + 1
    slot = _slot_for(state, ts)
    if slot is None:
        state.late_events += 1
        return
    col, row = state.block.col, state.row
    _add_count(state, "order_counts", slot)
    longest = float(col["longest_gaps"][row, slot])
    col["longest_gaps"][row, slot] = max(longest, round(gap_days, 1))
    col["order_amounts"][row, slot] = round(
        float(col["order_amounts"][row, slot]) + min(amount, cap), 2
    )


def _apply_inbound_contact(state: CustomerState, ts: float) -> None:
    state.inbound_total += 1
    first = state.first_inbound_at
    if not first or ts < first:
        state.first_inbound_at = ts
    state.last_inbound_at = max(state.last_inbound_at, ts)
    slot = _slot_for(state, ts)
    if slot is None:
        state.late_events += 1
        return
    _add_count(state, "inbound_contacts", slot)


def _apply_invoice(
    state: CustomerState, invoice_id: str, amount: float, due_ts: float, ts: float
) -> None:
    invoices = state.open_invoices
    invoices.append([invoice_id, round(amount, 2), due_ts, ts])
    if len(invoices) > MAX_OPEN_INVOICES:
        # Merge the two newest so no debt is lost; keep the earlier due date.
        newer = invoices.pop()
        older = invoices[-1]
        older[1] = round(older[1] + newer[1], 2)
        older[2] = min(older[2], newer[2])
    state.open_invoices = invoices


def _apply_payment(state: CustomerState, invoice_id: str, amount: float, ts: float) -> None:
    """Settle the named invoice; anything left over goes to the oldest open ones."""
    remaining = amount
    ordered = sorted(state.open_invoices, key=lambda inv: (inv[0] != invoice_id, inv[2]))
    for invoice in ordered:
        if remaining <= 0:
            break
        paid = min(invoice[1], remaining)
        invoice[1] = round(invoice[1] - paid, 2)
        remaining -= paid
        if invoice[1] <= 0.005:
            _record_settlement(state, max(0.0, (ts - invoice[2]) / DAY))
    state.open_invoices = [inv for inv in state.open_invoices if inv[1] > 0.005]


def _record_settlement(state: CustomerState, days_late: float) -> None:
    """Track lateness: a fast and a slow running average show whether delays grow."""
    settled = state.invoices_settled + 1
    state.invoices_settled = settled
    if days_late > 0:
        state.invoices_paid_late += 1
    if settled == 1:
        state.days_late_recent = state.days_late_usual = days_late
    else:
        recent, usual = state.days_late_recent, state.days_late_usual
        state.days_late_recent = recent + 0.3 * (days_late - recent)
        state.days_late_usual = usual + 0.05 * (days_late - usual)


def _apply_complaint(state: CustomerState, event: ComplaintOpened, ts: float) -> None:
    state.complaints_total += 1
    state.returns_amount = round(state.returns_amount + event.return_amount, 2)
    complaints = state.open_complaints
    complaints.append([event.complaint_id, ts, event.severity, event.category])
    state.open_complaints = complaints[-MAX_OPEN_COMPLAINTS:]
    slot = _slot_for(state, ts, SHORT_RING_WEEKS)
    if slot is None:
        state.late_events += 1
        return
    _add_count(state, "complaint_counts", slot)
    returns = state.block.col["return_amounts"]
    returns[state.row, slot] = round(float(returns[state.row, slot]) + event.return_amount, 2)
