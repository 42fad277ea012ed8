"""Per-customer state and the features read from it (pure: no I/O, no Faust).

``apply_event`` folds one event into a customer's state; ``read_features``
reads the features as of a point in (event) time. The Faust agent and any
batch job call the same two functions, so streaming and batch cannot drift.

The state is bounded: weekly buckets in a fixed ring, a capped list of open
invoices and open complaints, and a short list of recently seen event ids for
idempotency. Times are UTC epoch seconds inside the state.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from pipeline.events import (
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

DAY = 86_400
WEEK = 7 * DAY
#: Weekly buckets kept per customer: enough for recent + baseline windows and
#: the same weeks one year ago.
RING_WEEKS = 64
MAX_OPEN_INVOICES = 48
MAX_OPEN_COMPLAINTS = 16
RECENT_EVENT_IDS = 32
#: "The past year" for the longest pause: a year and a month, so that last
#: year's same season is fully inside.
PAST_YEAR_WEEKS = 56
#: Weeks either side of "the same weeks last year" that count as the season.
SEASON_MARGIN_WEEKS = 1
#: Orders larger than this many times the customer's typical order are capped
#: when they enter the baseline, so one big order does not inflate it.
BIG_ORDER_CAP = 4.0
#: Weight of the newest gap / amount in the running averages.
EWMA_ALPHA = 0.2


def week_of(ts: float) -> int:
    """Week number since the epoch (weeks start on Thursday 00:00 UTC)."""
    return int(ts // WEEK)


def to_epoch(moment: datetime) -> float:
    return moment.timestamp()


@dataclass(slots=True)
class CustomerState:
    """Everything the worker remembers about one customer, fixed size."""

    customer_id: str
    name: str = ""
    owner: str = ""
    segment: str = ""
    region: str = ""
    credit_limit: float = 0.0
    week_head: int = -1  # newest week in the rings, -1 before any activity
    order_counts: list[int] = field(default_factory=lambda: [0] * RING_WEEKS)
    order_amounts: list[float] = field(default_factory=lambda: [0.0] * RING_WEEKS)
    inbound_contacts: list[int] = field(default_factory=lambda: [0] * RING_WEEKS)
    # longest gap between two orders (days) that ended in each week
    longest_gaps: list[float] = field(default_factory=lambda: [0.0] * RING_WEEKS)
    first_seen_at: float = 0.0
    first_order_at: float = 0.0
    last_order_at: float = 0.0
    orders_total: int = 0
    mean_order_gap_days: float = 0.0
    typical_log_amount: float = 0.0
    first_inbound_at: float = 0.0
    last_inbound_at: float = 0.0
    inbound_total: int = 0
    # open invoices: [invoice_id, outstanding, due_ts, issued_ts]
    open_invoices: list[list[Any]] = field(default_factory=list)
    # open complaints: [complaint_id, opened_ts, severity]
    open_complaints: list[list[Any]] = field(default_factory=list)
    complaints_total: int = 0
    returns_amount: float = 0.0
    late_events: int = 0
    recent_event_ids: list[int] = field(default_factory=list)
    # open warning episodes: type -> [warning_id, opened_ts, severity]
    episodes: dict[str, list[Any]] = field(default_factory=dict)

    def to_row(self) -> list[Any]:
        """Compact JSON-able form for the Faust table (a list, field order)."""
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_row(cls, row: list[Any]) -> CustomerState:
        return cls(*row)


def new_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id)


def _advance_ring(state: CustomerState, week: int) -> None:
    """Move the rings forward to ``week``, zeroing the buckets that roll over."""
    if state.week_head < 0:
        state.week_head = week
        return
    if week <= state.week_head:
        return
    for w in range(state.week_head + 1, min(week, state.week_head + RING_WEEKS) + 1):
        slot = w % RING_WEEKS
        state.order_counts[slot] = 0
        state.order_amounts[slot] = 0.0
        state.inbound_contacts[slot] = 0
        state.longest_gaps[slot] = 0.0
    state.week_head = week


def _slot_for(state: CustomerState, ts: float) -> int | None:
    """Ring slot for an event at ``ts``; None if older than the ring holds."""
    week = week_of(ts)
    _advance_ring(state, week)
    if week <= state.week_head - RING_WEEKS:
        return None
    return week % RING_WEEKS


def _seen_before(state: CustomerState, event_id: str) -> bool:
    digest = zlib.crc32(event_id.encode("utf-8"))
    if digest in state.recent_event_ids:
        return True
    state.recent_event_ids.append(digest)
    del state.recent_event_ids[:-RECENT_EVENT_IDS]
    return False


def apply_event(state: CustomerState, event: CustomerEvent) -> bool:
    """Fold ``event`` into ``state``. Returns False for a duplicate (already applied)."""
    if _seen_before(state, event.event_id):
        return False
    ts = to_epoch(event.occurred_at)
    if not state.first_seen_at or ts < state.first_seen_at:
        state.first_seen_at = ts
    if isinstance(event, OrderPlaced):
        _apply_order(state, ts, event.amount)
    elif isinstance(event, InvoiceIssued):
        _apply_invoice(state, event.invoice_id, event.amount, to_epoch(event.due_date), ts)
    elif isinstance(event, PaymentReceived | CreditNote):
        _apply_payment(state, event.invoice_id, event.amount)
    elif isinstance(event, ComplaintOpened):
        state.complaints_total += 1
        state.returns_amount = round(state.returns_amount + event.return_amount, 2)
        state.open_complaints.append([event.complaint_id, ts, event.severity])
        del state.open_complaints[:-MAX_OPEN_COMPLAINTS]
    elif isinstance(event, ComplaintResolved):
        state.open_complaints = [c for c in state.open_complaints if c[0] != event.complaint_id]
    elif isinstance(event, Contact):
        if event.direction == "inbound":
            _apply_inbound_contact(state, ts)
    elif isinstance(event, CustomerUpdated):
        state.name = event.name
        state.owner = event.owner
        state.segment = event.segment
        state.region = event.region
        state.credit_limit = event.credit_limit
    return True


def _apply_order(state: CustomerState, ts: float, amount: float) -> None:
    log_amount = math.log1p(amount)
    cap = BIG_ORDER_CAP * math.expm1(state.typical_log_amount) if state.orders_total else amount
    if state.orders_total == 0:
        state.typical_log_amount = log_amount
        state.first_order_at = ts
    else:
        # Winsorised, so one huge order barely moves what "typical" means.
        limit = math.log(BIG_ORDER_CAP)
        step = max(-limit, min(limit, log_amount - state.typical_log_amount))
        state.typical_log_amount += EWMA_ALPHA * step
    gap_days = 0.0
    if ts > state.last_order_at:
        if state.last_order_at:
            gap_days = (ts - state.last_order_at) / DAY
            if state.mean_order_gap_days == 0:
                state.mean_order_gap_days = gap_days
            else:
                state.mean_order_gap_days += EWMA_ALPHA * (gap_days - state.mean_order_gap_days)
        state.last_order_at = ts
    state.first_order_at = min(state.first_order_at, ts)
    state.orders_total += 1
    slot = _slot_for(state, ts)
    if slot is None:
        state.late_events += 1
        return
    state.order_counts[slot] += 1
    state.longest_gaps[slot] = max(state.longest_gaps[slot], round(gap_days, 1))
    state.order_amounts[slot] = round(state.order_amounts[slot] + min(amount, cap), 2)


def _apply_inbound_contact(state: CustomerState, ts: float) -> None:
    state.inbound_total += 1
    if not state.first_inbound_at or ts < state.first_inbound_at:
        state.first_inbound_at = ts
    state.last_inbound_at = max(state.last_inbound_at, ts)
    slot = _slot_for(state, ts)
    if slot is None:
        state.late_events += 1
        return
    state.inbound_contacts[slot] += 1


def _apply_invoice(
    state: CustomerState, invoice_id: str, amount: float, due_ts: float, ts: float
) -> None:
    state.open_invoices.append([invoice_id, round(amount, 2), due_ts, ts])
    if len(state.open_invoices) > MAX_OPEN_INVOICES:
        # Merge the two newest so no debt is lost; keep the earlier due date.
        newer = state.open_invoices.pop()
        older = state.open_invoices[-1]
        older[1] = round(older[1] + newer[1], 2)
        older[2] = min(older[2], newer[2])


def _apply_payment(state: CustomerState, invoice_id: str, amount: float) -> None:
    """Settle the named invoice; anything left over goes to the oldest open ones."""
    remaining = amount
    ordered = sorted(state.open_invoices, key=lambda inv: (inv[0] != invoice_id, inv[2]))
    for invoice in ordered:
        if remaining <= 0:
            break
        paid = min(invoice[1], remaining)
        invoice[1] = round(invoice[1] - paid, 2)
        remaining -= paid
    state.open_invoices = [inv for inv in state.open_invoices if inv[1] > 0.005]


# --- reading features -------------------------------------------------------------


def _window_sum(state: CustomerState, ring: list[Any], last_week: int, weeks: int) -> float:
    """Sum of ``ring`` over the ``weeks`` weeks ending with ``last_week`` (inclusive)."""
    total = 0.0
    oldest_kept = state.week_head - RING_WEEKS + 1
    for week in range(last_week - weeks + 1, last_week + 1):
        if oldest_kept <= week <= state.week_head:
            total += ring[week % RING_WEEKS]
    return total


def _window_max(state: CustomerState, ring: list[float], last_week: int, weeks: int) -> float:
    oldest_kept = state.week_head - RING_WEEKS + 1
    lo = max(last_week - weeks + 1, oldest_kept)
    return max(
        (ring[w % RING_WEEKS] for w in range(lo, min(last_week, state.week_head) + 1)), default=0.0
    )


@dataclass(frozen=True, slots=True)
class Features:
    """What the rules read, as of one moment; names are the business's words."""

    as_of: float
    history_weeks: float
    orders_recent: float
    amount_recent: float
    orders_baseline_per_week: float
    amount_baseline_per_week: float
    amount_same_weeks_last_year: float | None
    orders_total: int
    days_since_last_order: float | None
    mean_order_gap_days: float
    longest_gap_past_year_days: float
    inbound_recent: float
    inbound_baseline_per_week: float
    days_since_last_inbound: float | None
    open_balance: float
    overdue_amount: float
    max_days_past_due: float
    overdue_invoices: int
    open_complaints: int
    revenue_52w: float


def read_features(
    state: CustomerState, as_of: datetime | float, recent_weeks: int = 8, baseline_weeks: int = 26
) -> Features:
    """Features of ``state`` as of ``as_of`` (event time)."""
    now = as_of if isinstance(as_of, float | int) else to_epoch(as_of)
    now_week = week_of(now)
    recent_end = now_week
    baseline_end = now_week - recent_weeks
    last_year_end = now_week - 52
    history_weeks = (now - state.first_seen_at) / WEEK if state.first_seen_at else 0.0

    overdue_amount = 0.0
    max_dpd = 0.0
    overdue_invoices = 0
    open_balance = 0.0
    for _invoice_id, outstanding, due_ts, _issued in state.open_invoices:
        open_balance += outstanding
        if due_ts < now:
            overdue_amount += outstanding
            overdue_invoices += 1
            max_dpd = max(max_dpd, (now - due_ts) / DAY)

    # Last year's level around the same weeks (a week either side, scaled to
    # the recent window) smooths out the odd early or late order.
    ly_weeks = recent_weeks + 2 * SEASON_MARGIN_WEEKS
    ly_end = last_year_end + SEASON_MARGIN_WEEKS
    last_year_covered = (
        state.first_seen_at
        and week_of(state.first_seen_at) <= ly_end - ly_weeks + 1
        and ly_end - ly_weeks + 1 > state.week_head - RING_WEEKS
    )
    return Features(
        as_of=now,
        history_weeks=history_weeks,
        orders_recent=_window_sum(state, state.order_counts, recent_end, recent_weeks),
        amount_recent=_window_sum(state, state.order_amounts, recent_end, recent_weeks),
        orders_baseline_per_week=_window_sum(
            state, state.order_counts, baseline_end, baseline_weeks
        )
        / baseline_weeks,
        amount_baseline_per_week=_window_sum(
            state, state.order_amounts, baseline_end, baseline_weeks
        )
        / baseline_weeks,
        amount_same_weeks_last_year=(
            _window_sum(state, state.order_amounts, ly_end, ly_weeks) * recent_weeks / ly_weeks
            if last_year_covered
            else None
        ),
        orders_total=state.orders_total,
        days_since_last_order=(now - state.last_order_at) / DAY if state.last_order_at else None,
        mean_order_gap_days=state.mean_order_gap_days,
        longest_gap_past_year_days=_window_max(
            state, state.longest_gaps, now_week, PAST_YEAR_WEEKS
        ),
        inbound_recent=_window_sum(state, state.inbound_contacts, recent_end, recent_weeks),
        inbound_baseline_per_week=_window_sum(
            state, state.inbound_contacts, baseline_end, baseline_weeks
        )
        / baseline_weeks,
        days_since_last_inbound=(
            (now - state.last_inbound_at) / DAY if state.last_inbound_at else None
        ),
        open_balance=round(open_balance, 2),
        overdue_amount=round(overdue_amount, 2),
        max_days_past_due=max_dpd,
        overdue_invoices=overdue_invoices,
        open_complaints=len(state.open_complaints),
        revenue_52w=_window_sum(state, state.order_amounts, now_week, 52),
    )
