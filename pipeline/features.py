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
#: Rings for signals that are only read over the recent quarter.
SHORT_RING_WEEKS = 16
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
    # shorter rings (SHORT_RING_WEEKS): complaints opened, returns, outbound contacts
    complaint_counts: list[int] = field(default_factory=lambda: [0] * SHORT_RING_WEEKS)
    return_amounts: list[float] = field(default_factory=lambda: [0.0] * SHORT_RING_WEEKS)
    outbound_contacts: list[int] = field(default_factory=lambda: [0] * SHORT_RING_WEEKS)
    first_seen_at: float = 0.0
    first_order_at: float = 0.0
    last_order_at: float = 0.0
    orders_total: int = 0
    mean_order_gap_days: float = 0.0
    order_gap_var: float = 0.0  # running variance of the gap, for regularity
    typical_log_amount: float = 0.0
    first_inbound_at: float = 0.0
    last_inbound_at: float = 0.0
    inbound_total: int = 0
    last_contact_at: float = 0.0
    invoices_settled: int = 0
    invoices_paid_late: int = 0
    days_late_recent: float = 0.0  # fast running average of days late per settled invoice
    days_late_usual: float = 0.0  # slow running average
    # open invoices: [invoice_id, outstanding, due_ts, issued_ts]
    open_invoices: list[list[Any]] = field(default_factory=list)
    # open complaints: [complaint_id, opened_ts, severity, category]
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
        short = w % SHORT_RING_WEEKS
        state.complaint_counts[short] = 0
        state.return_amounts[short] = 0.0
        state.outbound_contacts[short] = 0
    state.week_head = week


def _slot_for(state: CustomerState, ts: float, ring_weeks: int = RING_WEEKS) -> int | None:
    """Ring slot for an event at ``ts``; None if older than the ring holds."""
    week = week_of(ts)
    _advance_ring(state, week)
    if week <= state.week_head - ring_weeks:
        return None
    return week % ring_weeks


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
                state.outbound_contacts[slot] += 1
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
                deviation = gap_days - state.mean_order_gap_days
                state.mean_order_gap_days += EWMA_ALPHA * deviation
                state.order_gap_var = (1 - EWMA_ALPHA) * (
                    state.order_gap_var + EWMA_ALPHA * deviation * deviation
                )
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
    state.invoices_settled += 1
    state.invoices_paid_late += days_late > 0
    if state.invoices_settled == 1:
        state.days_late_recent = state.days_late_usual = days_late
    else:
        state.days_late_recent += 0.3 * (days_late - state.days_late_recent)
        state.days_late_usual += 0.05 * (days_late - state.days_late_usual)


def _apply_complaint(state: CustomerState, event: ComplaintOpened, ts: float) -> None:
    state.complaints_total += 1
    state.returns_amount = round(state.returns_amount + event.return_amount, 2)
    state.open_complaints.append([event.complaint_id, ts, event.severity, event.category])
    del state.open_complaints[:-MAX_OPEN_COMPLAINTS]
    slot = _slot_for(state, ts, SHORT_RING_WEEKS)
    if slot is None:
        state.late_events += 1
        return
    state.complaint_counts[slot] += 1
    state.return_amounts[slot] = round(state.return_amounts[slot] + event.return_amount, 2)


# --- reading features -------------------------------------------------------------


def _view(state: CustomerState, ring: list[Any], now_week: int) -> list[Any]:
    """The ring as a list of weeks ending with ``now_week`` (oldest first).

    Weeks the ring no longer (or not yet) holds read as zero.
    """
    size = len(ring)
    if state.week_head < 0 or not any(ring):
        return [0] * size
    lo = now_week - size + 1
    start = lo % size
    view = ring[start:] + ring[:start]
    ahead = now_week - state.week_head  # weeks after the newest bucket: nothing there yet
    if ahead > 0:
        view[max(0, size - ahead) :] = [0] * min(ahead, size)
    elif ahead < 0:  # evaluated before the newest bucket: the oldest slots hold later weeks
        view[: min(-ahead, size)] = [0] * min(-ahead, size)
    return view


QUADRANTS = {
    (True, True): "protect",
    (True, False): "at_risk",
    (False, True): "grow",
    (False, False): "let_go",
}


@dataclass(slots=True)
class Features:
    """What the rules read, as of one moment; names are the business's words.

    Read-only by convention, not frozen: one is built per customer per sweep,
    and a frozen dataclass of this size takes ten times as long to build.
    """

    as_of: float
    history_weeks: float
    # orders
    orders_recent: float
    amount_recent: float
    orders_baseline_per_week: float
    amount_baseline_per_week: float
    amount_same_weeks_last_year: float | None
    orders_4w: float
    orders_13w: float
    amount_13w: float
    orders_total: int
    days_since_last_order: float | None
    mean_order_gap_days: float
    silence_vs_usual_gap: float | None
    longest_gap_past_year_days: float
    amount_trend: float | None  # recent weekly revenue vs baseline, -1..+inf
    # payments
    open_balance: float
    overdue_amount: float
    overdue_1_30: float
    overdue_31_60: float
    overdue_61_90: float
    overdue_over_90: float
    max_days_past_due: float
    overdue_invoices: int
    share_paid_late: float | None
    days_late_recent: float
    days_late_usual: float
    payment_delays_growing: bool
    open_disputes: int
    credit_used: float | None
    # complaints
    complaints_4w: float
    complaints_13w: float
    complaints_usual_4w: float  # the customer's own rate before the last 4 weeks
    open_complaints: int
    oldest_open_complaint_days: float
    max_open_severity: int
    returns_13w: float
    returns_share_13w: float | None
    # engagement
    inbound_recent: float
    inbound_baseline_per_week: float
    days_since_last_inbound: float | None
    days_since_last_contact: float | None
    outbound_recent: float
    inbound_share_recent: float | None
    # value and loyalty
    revenue_52w: float
    tenure_days: float
    order_regularity: float | None  # coefficient of variation of the gap; lower is steadier
    quadrant: str


def read_features(
    state: CustomerState,
    as_of: datetime | float,
    recent_weeks: int = 8,
    baseline_weeks: int = 26,
    high_value_revenue: float = 50_000.0,
) -> Features:
    """Features of ``state`` as of ``as_of`` (event time)."""
    now = as_of if isinstance(as_of, float | int) else to_epoch(as_of)
    now_week = week_of(now)
    last = RING_WEEKS  # index after now_week in a full view
    history_weeks = (now - state.first_seen_at) / WEEK if state.first_seen_at else 0.0

    counts = _view(state, state.order_counts, now_week)
    amounts = _view(state, state.order_amounts, now_week)
    inbound = _view(state, state.inbound_contacts, now_week)
    gaps = _view(state, state.longest_gaps, now_week)
    complaints = _view(state, state.complaint_counts, now_week)
    returns = _view(state, state.return_amounts, now_week)
    outbound = _view(state, state.outbound_contacts, now_week)
    short = SHORT_RING_WEEKS

    recent = slice(last - recent_weeks, last)
    baseline = slice(last - recent_weeks - baseline_weeks, last - recent_weeks)
    amount_recent = float(sum(amounts[recent]))
    amount_baseline = float(sum(amounts[baseline])) / baseline_weeks

    # Last year's level around the same weeks (a week either side, scaled to
    # the recent window) smooths out the odd early or late order.
    ly_weeks = recent_weeks + 2 * SEASON_MARGIN_WEEKS
    ly_end = last - 52 + SEASON_MARGIN_WEEKS  # exclusive index
    ly_first_week = now_week - 52 + SEASON_MARGIN_WEEKS - ly_weeks + 1
    last_year_covered = bool(state.first_seen_at) and week_of(state.first_seen_at) <= ly_first_week
    same_weeks_last_year = (
        float(sum(amounts[ly_end - ly_weeks : ly_end])) * recent_weeks / ly_weeks
        if last_year_covered
        else None
    )

    buckets = [0.0, 0.0, 0.0, 0.0]
    max_dpd = 0.0
    overdue_invoices = 0
    open_balance = 0.0
    for _invoice_id, outstanding, due_ts, _issued in state.open_invoices:
        open_balance += outstanding
        if due_ts < now:
            dpd = (now - due_ts) / DAY
            buckets[0 if dpd <= 30 else 1 if dpd <= 60 else 2 if dpd <= 90 else 3] += outstanding
            overdue_invoices += 1
            max_dpd = max(max_dpd, dpd)

    complaints_4w = float(sum(complaints[short - 4 : short]))
    oldest_complaint = min((c[1] for c in state.open_complaints), default=None)
    days_since_last_order = (now - state.last_order_at) / DAY if state.last_order_at else None
    gap = state.mean_order_gap_days
    revenue_52w = float(sum(amounts[last - 52 : last]))
    amount_13w = float(sum(amounts[last - 13 : last]))
    returns_13w = float(sum(returns[short - 13 : short]))
    inbound_recent = float(sum(inbound[recent]))
    outbound_recent = float(sum(outbound[short - recent_weeks : short]))
    regularity = (
        math.sqrt(state.order_gap_var) / gap if gap > 0 and state.orders_total >= 4 else None
    )
    tenure_days = (now - state.first_seen_at) / DAY if state.first_seen_at else 0.0
    loyal = tenure_days >= 365 and regularity is not None and regularity <= 1.0
    return Features(
        as_of=now,
        history_weeks=history_weeks,
        orders_recent=float(sum(counts[recent])),
        amount_recent=amount_recent,
        orders_baseline_per_week=float(sum(counts[baseline])) / baseline_weeks,
        amount_baseline_per_week=amount_baseline,
        amount_same_weeks_last_year=same_weeks_last_year,
        orders_4w=float(sum(counts[last - 4 : last])),
        orders_13w=float(sum(counts[last - 13 : last])),
        amount_13w=amount_13w,
        orders_total=state.orders_total,
        days_since_last_order=days_since_last_order,
        mean_order_gap_days=gap,
        silence_vs_usual_gap=(
            days_since_last_order / gap if days_since_last_order is not None and gap > 0 else None
        ),
        longest_gap_past_year_days=float(max(gaps[last - PAST_YEAR_WEEKS : last])),
        amount_trend=(
            amount_recent / (amount_baseline * recent_weeks) - 1 if amount_baseline > 0 else None
        ),
        open_balance=open_balance,
        overdue_amount=sum(buckets),
        overdue_1_30=buckets[0],
        overdue_31_60=buckets[1],
        overdue_61_90=buckets[2],
        overdue_over_90=buckets[3],
        max_days_past_due=max_dpd,
        overdue_invoices=overdue_invoices,
        share_paid_late=(
            state.invoices_paid_late / state.invoices_settled if state.invoices_settled else None
        ),
        days_late_recent=state.days_late_recent,
        days_late_usual=state.days_late_usual,
        payment_delays_growing=state.invoices_settled >= 4
        and state.days_late_recent > state.days_late_usual + 5,
        open_disputes=sum(1 for c in state.open_complaints if c[3:4] == ["billing"]),
        credit_used=open_balance / state.credit_limit if state.credit_limit > 0 else None,
        complaints_4w=complaints_4w,
        complaints_13w=float(sum(complaints[short - 13 : short])),
        complaints_usual_4w=(
            4 * (state.complaints_total - complaints_4w) / max(history_weeks - 4, 4)
        ),
        open_complaints=len(state.open_complaints),
        oldest_open_complaint_days=(now - oldest_complaint) / DAY if oldest_complaint else 0.0,
        max_open_severity=max((int(c[2]) for c in state.open_complaints), default=0),
        returns_13w=returns_13w,
        returns_share_13w=returns_13w / amount_13w if amount_13w > 0 else None,
        inbound_recent=inbound_recent,
        inbound_baseline_per_week=float(sum(inbound[baseline])) / baseline_weeks,
        days_since_last_inbound=(
            (now - state.last_inbound_at) / DAY if state.last_inbound_at else None
        ),
        days_since_last_contact=(
            (now - state.last_contact_at) / DAY if state.last_contact_at else None
        ),
        outbound_recent=outbound_recent,
        inbound_share_recent=(
            inbound_recent / (inbound_recent + outbound_recent)
            if inbound_recent + outbound_recent > 0
            else None
        ),
        revenue_52w=revenue_52w,
        tenure_days=tenure_days,
        order_regularity=regularity,
        quadrant=QUADRANTS[(revenue_52w >= high_value_revenue, loyal)],
    )
