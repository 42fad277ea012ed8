"""Per-customer state and the features read from it (pure: no I/O, no Faust).

``apply_event`` folds one event into a customer's state; ``read_many`` reads
the features of many customers at once as of a point in (event) time, and
``read_features`` is that same read for one customer. The Faust agent and
every batch job call the same functions, so streaming and batch cannot drift.

The state is compact and bounded. The customers of one partition (or of a
whole batch run) live in one :class:`StateBlock`: a numpy structured array of
fixed-size records (weekly buckets in rings, running averages, the open
episodes, the last event ids seen) plus a few short Python values per
customer (name, owner, region, open invoices and complaints). A sweep reads
the features of a whole block with a handful of vectorised operations. A
stored record carries its format version (:func:`encode_state`), and old
records are migrated by field name (:func:`decode_state`).

Times are UTC epoch seconds inside the state; amounts in the rings are whole
cents rounded as floats, summed week by week in order, so every feature is
the same number however many customers are read at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from itertools import chain, compress
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from churnwatch.core.topics import EVENT_TOPICS
from pipeline.events import (
    WARNING_TYPES,
    ComplaintOpened,
    ComplaintResolved,
    Contact,
    CreditNote,
    CustomerEvent,
    CustomerUpdated,
    InvoiceIssued,
    OrderPlaced,
    PaymentReceived,
    Severity,
)
from pipeline.kernels import window_max, window_sums

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
MAX_WEEKLY_COUNT = 65_535

#: Version of the stored record; bump it when :data:`STATE_DTYPE` changes and
#: keep the old dtype in :data:`STATE_DTYPES` so old records migrate by name.
FORMAT_VERSION = 2
_EPISODES = len(WARNING_TYPES)
EPISODE_INDEX: dict[str, int] = {warning_type: i for i, warning_type in enumerate(WARNING_TYPES)}

#: The fixed-size part of a customer's state (format version 1).
_FIELDS_V1 = np.dtype(
    [
        ("week_head", "<i4"),  # newest week in the rings, -1 before any activity
        ("order_counts", "<u2", (RING_WEEKS,)),
        ("order_amounts", "<f8", (RING_WEEKS,)),  # rounded to cents
        ("inbound_contacts", "<u2", (RING_WEEKS,)),
        # longest gap between two orders (days, to a tenth) that ended in each week
        ("longest_gaps", "<f8", (RING_WEEKS,)),
        ("complaint_counts", "<u2", (SHORT_RING_WEEKS,)),
        ("return_amounts", "<f8", (SHORT_RING_WEEKS,)),
        ("outbound_contacts", "<u2", (SHORT_RING_WEEKS,)),
        ("segment_code", "<i2"),  # index into StateBlock.segment_names
        ("credit_limit", "<f8"),
        ("first_seen_at", "<f8"),
        ("first_order_at", "<f8"),
        ("last_order_at", "<f8"),
        ("orders_total", "<i4"),
        ("mean_order_gap_days", "<f8"),
        ("order_gap_var", "<f8"),  # running variance of the gap, for regularity
        ("typical_log_amount", "<f8"),
        ("first_inbound_at", "<f8"),
        ("last_inbound_at", "<f8"),
        ("inbound_total", "<i4"),
        ("last_contact_at", "<f8"),
        ("invoices_settled", "<i4"),
        ("invoices_paid_late", "<i4"),
        ("days_late_recent", "<f8"),  # fast running average of days late per settled invoice
        ("days_late_usual", "<f8"),  # slow running average
        ("complaints_total", "<i4"),
        ("returns_amount", "<f8"),
        ("late_events", "<i4"),
        ("event_ids", "<u4", (RECENT_EVENT_IDS,)),  # crc32 of the last ids, a ring
        ("event_ids_count", "<u4"),  # ids ever recorded (position in the ring)
        ("episode_opened_at", "<f8", (_EPISODES,)),  # per WARNING_TYPES
        ("episode_severity", "<i1", (_EPISODES,)),  # index into SEVERITIES, -1: none open
    ]
)
#: Where the worker's stream stood when it last stored the customer, so that a
#: record is self-sufficient after a crash whatever else of its batch reached the
#: changelog: the partition's last sweep boundary, its event clock (every event
#: read at or before it was applied) and, per input topic (EVENT_TOPICS order),
#: the highest offset read. The batch path leaves them 0. Format version 2.
STREAM_FIELDS = ("stream_sweep", "stream_clock", "stream_offsets")
STATE_DTYPE = np.dtype(
    [
        *_FIELDS_V1.descr,
        ("stream_sweep", "<f8"),
        ("stream_clock", "<f8"),
        ("stream_offsets", "<i8", (len(EVENT_TOPICS),)),
    ]
)
#: Every stored format's fixed part, by version: decoding migrates by field name.
STATE_DTYPES: dict[int, np.dtype[Any]] = {1: _FIELDS_V1, 2: STATE_DTYPE}
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

_RINGS = ("order_counts", "order_amounts", "inbound_contacts", "longest_gaps")
_SHORT_RINGS = ("complaint_counts", "return_amounts", "outbound_contacts")


def week_of(ts: float) -> int:
    """Week number since the epoch (weeks start on Thursday 00:00 UTC)."""
    return int(ts // WEEK)


def to_epoch(moment: datetime) -> float:
    return moment.timestamp()


def _blank_record() -> npt.NDArray[np.void]:
    record = np.zeros(1, STATE_DTYPE)
    record["week_head"] = -1
    record["episode_severity"] = -1
    return record


class StateBlock(Mapping[str, "CustomerState"]):
    """The states of many customers: one partition's, or a whole batch run's.

    A mapping of customer id to :class:`CustomerState` (a view of one row).
    The fixed-size part of every customer is one row of a structured array,
    so features of all customers are read with vectorised operations; the
    short Python values (name, owner, region, open invoices and complaints)
    sit beside it, by row.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.data = np.repeat(_blank_record(), capacity)
        self.size = 0
        self.rows: dict[str, int] = {}
        self.customer_ids: list[str] = []
        self.names: list[str] = []
        self.owners: list[str] = []
        self.regions: list[str] = []
        self.invoices: dict[int, list[list[Any]]] = {}  # row -> [[id, outstanding, due, issued]]
        self.complaints: dict[
            int, list[list[Any]]
        ] = {}  # row -> [[id, opened, severity, category]]
        self.segment_names: list[str] = [""]
        self._segment_codes: dict[str, int] = {"": 0}
        self._columns()

    def _columns(self) -> None:
        self.col: dict[str, Any] = {name: self.data[name] for name in STATE_DTYPE.names or ()}

    # --- Mapping ---------------------------------------------------------------
    def __getitem__(self, customer_id: str) -> CustomerState:
        return CustomerState(self, self.rows[customer_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.customer_ids)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self.rows

    # --- rows ------------------------------------------------------------------
    def state(self, customer_id: str) -> CustomerState:
        """The customer's state, created empty on first use."""
        row = self.rows.get(customer_id)
        if row is None:
            row = self._add(customer_id)
        return CustomerState(self, row)

    def _add(self, customer_id: str) -> int:
        if self.size == len(self.data):
            grown = np.repeat(_blank_record(), max(256, len(self.data) // 4))
            self.data = np.concatenate([self.data, grown])
            self._columns()
        row = self.size
        self.size += 1
        self.rows[customer_id] = row
        self.customer_ids.append(customer_id)
        self.names.append("")
        self.owners.append("")
        self.regions.append("")
        return row

    def segment_code(self, segment: str) -> int:
        code = self._segment_codes.get(segment)
        if code is None:
            code = self._segment_codes[segment] = len(self.segment_names)
            self.segment_names.append(segment)
        return code

    def used(self) -> npt.NDArray[np.void]:
        return self.data[: self.size]


class CustomerState:
    """One customer's state: a view of one row of a :class:`StateBlock`."""

    if TYPE_CHECKING:  # the record's fields, as properties made below from STATE_DTYPE
        week_head: int
        order_counts: npt.NDArray[np.uint16]
        order_amounts: npt.NDArray[np.float64]
        inbound_contacts: npt.NDArray[np.uint16]
        longest_gaps: npt.NDArray[np.float64]
        complaint_counts: npt.NDArray[np.uint16]
        return_amounts: npt.NDArray[np.float64]
        outbound_contacts: npt.NDArray[np.uint16]
        credit_limit: float
        first_seen_at: float
        first_order_at: float
        last_order_at: float
        orders_total: int
        mean_order_gap_days: float
        order_gap_var: float
        typical_log_amount: float
        first_inbound_at: float
        last_inbound_at: float
        inbound_total: int
        last_contact_at: float
        invoices_settled: int
        invoices_paid_late: int
        days_late_recent: float
        days_late_usual: float
        complaints_total: int
        returns_amount: float
        late_events: int
        open_invoices: list[list[Any]]  # [invoice id, outstanding, due, issued]
        open_complaints: list[list[Any]]  # [complaint id, opened, severity, category]
    else:
        __slots__ = ("block", "row")  # a view: made per customer touched, so kept light

    def __init__(self, block: StateBlock, row: int) -> None:
        self.block = block
        self.row = row

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        return encode_state(self) == encode_state(other)

    def __hash__(self) -> int:
        return hash((id(self.block), self.row))

    def __repr__(self) -> str:
        return f"CustomerState({self.customer_id!r})"

    @property
    def customer_id(self) -> str:
        return self.block.customer_ids[self.row]

    @property
    def name(self) -> str:
        return self.block.names[self.row]

    @name.setter
    def name(self, value: str) -> None:
        self.block.names[self.row] = value

    @property
    def owner(self) -> str:
        return self.block.owners[self.row]

    @owner.setter
    def owner(self, value: str) -> None:
        self.block.owners[self.row] = sys.intern(value)

    @property
    def region(self) -> str:
        return self.block.regions[self.row]

    @region.setter
    def region(self, value: str) -> None:
        self.block.regions[self.row] = sys.intern(value)

    @property
    def segment(self) -> str:
        return self.block.segment_names[int(self.block.col["segment_code"][self.row])]

    @segment.setter
    def segment(self, value: str) -> None:
        self.block.col["segment_code"][self.row] = self.block.segment_code(value)

    @property
    def recent_event_ids(self) -> list[int]:
        """crc32 of the last :data:`RECENT_EVENT_IDS` event ids applied (duplicates are skipped)."""
        count = int(self.block.col["event_ids_count"][self.row])
        ids: list[int] = self.block.col["event_ids"][self.row][
            : min(count, RECENT_EVENT_IDS)
        ].tolist()
        return ids

    # --- open warning episodes ---------------------------------------------------
    def episode(self, warning_type: str) -> tuple[str, float, Severity] | None:
        """The open episode of this type: (warning id, opened at, severity), or None."""
        i = EPISODE_INDEX[warning_type]
        severity = int(self.block.col["episode_severity"][self.row, i])
        if severity < 0:
            return None
        opened = float(self.block.col["episode_opened_at"][self.row, i])
        return warning_id(self.customer_id, warning_type, opened), opened, SEVERITIES[severity]

    @property
    def episodes(self) -> dict[str, tuple[str, float, Severity]]:
        """Every open episode, by warning type."""
        out: dict[str, tuple[str, float, Severity]] = {}
        for warning_type in WARNING_TYPES:
            episode = self.episode(warning_type)
            if episode is not None:
                out[warning_type] = episode
        return out

    def open_episode(self, warning_type: str, opened_at: float, severity: str) -> None:
        i = EPISODE_INDEX[warning_type]
        self.block.col["episode_opened_at"][self.row, i] = opened_at
        self.block.col["episode_severity"][self.row, i] = SEVERITIES.index(severity)

    def regrade_episode(self, warning_type: str, severity: str) -> None:
        self.block.col["episode_severity"][self.row, EPISODE_INDEX[warning_type]] = (
            SEVERITIES.index(severity)
        )

    def close_episode(self, warning_type: str) -> None:
        i = EPISODE_INDEX[warning_type]
        self.block.col["episode_opened_at"][self.row, i] = 0.0
        self.block.col["episode_severity"][self.row, i] = -1


def _scalar(name: str) -> property:
    def get(self: CustomerState) -> Any:
        return self.block.col[name][self.row].item()

    def put(self: CustomerState, value: Any) -> None:
        self.block.col[name][self.row] = value

    return property(get, put)


def _sparse(name: str) -> property:
    """A per-customer list kept beside the record, only for customers that have one."""

    def get(self: CustomerState) -> list[list[Any]]:
        table: dict[int, list[list[Any]]] = getattr(self.block, name)
        return table.get(self.row, [])

    def put(self: CustomerState, value: list[list[Any]]) -> None:
        table: dict[int, list[list[Any]]] = getattr(self.block, name)
        if value:
            table[self.row] = value
        else:
            table.pop(self.row, None)

    return property(get, put)


CustomerState.open_invoices = _sparse("invoices")  # type: ignore[assignment]
CustomerState.open_complaints = _sparse("complaints")  # type: ignore[assignment]


def _ring(name: str) -> property:
    def get(self: CustomerState) -> Any:
        return self.block.col[name][self.row]

    return property(get)


for _field in STATE_DTYPE.names or ():
    if _field.startswith(("episode_", "event_ids", "segment_code", "stream_")) or hasattr(
        CustomerState, _field
    ):
        continue
    _shape = STATE_DTYPE.fields[_field][0].shape if STATE_DTYPE.fields else ()
    setattr(CustomerState, _field, _ring(_field) if _shape else _scalar(_field))


def new_state(customer_id: str) -> CustomerState:
    """A new, empty customer in a block of its own."""
    return StateBlock(capacity=1).state(customer_id)


def warning_id(customer_id: str, warning_type: str, opened_ts: float) -> str:
    """The deterministic id of the episode opened at ``opened_ts``."""
    digest = hashlib.sha256(f"{customer_id}|{warning_type}|{int(opened_ts)}".encode()).hexdigest()
    return f"w-{digest[:16]}"


# --- applying events ----------------------------------------------------------------


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
        for name in _RINGS:
            col[name][row, week % RING_WEEKS] = 0
        for name in _SHORT_RINGS:
            col[name][row, week % SHORT_RING_WEEKS] = 0
    else:
        weeks = np.arange(head + 1, min(week, head + RING_WEEKS) + 1)
        for name in _RINGS:
            col[name][row, weeks % RING_WEEKS] = 0
        for name in _SHORT_RINGS:
            col[name][row, weeks % SHORT_RING_WEEKS] = 0
    col["week_head"][row] = week


def _slot_for(state: CustomerState, ts: float, ring_weeks: int = RING_WEEKS) -> int | None:
    """Ring slot for an event at ``ts``; None if older than the ring holds."""
    week = week_of(ts)
    _advance_ring(state, week)
    if week <= int(state.block.col["week_head"][state.row]) - ring_weeks:
        return None
    return week % ring_weeks


def _seen_before(state: CustomerState, event_id: str) -> bool:
    col, row = state.block.col, state.row
    digest = zlib.crc32(event_id.encode("utf-8"))
    count = int(col["event_ids_count"][row])
    ids = col["event_ids"][row]
    if digest in (ids.tolist() if count >= RECENT_EVENT_IDS else ids[:count].tolist()):
        return True
    ids[count % RECENT_EVENT_IDS] = digest
    col["event_ids_count"][row] = count + 1
    return False


def _add_count(state: CustomerState, ring: str, slot: int) -> None:
    column = state.block.col[ring]
    column[state.row, slot] = min(MAX_WEEKLY_COUNT, int(column[state.row, slot]) + 1)


def apply_event(state: CustomerState, event: CustomerEvent) -> bool:
    """Fold ``event`` into ``state``. Returns False for a duplicate (already applied)."""
    if _seen_before(state, event.event_id):
        return False
    ts = event.epoch
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


# --- storing states -----------------------------------------------------------------

_HEADER = struct.Struct("<2sBH")  # magic, format version, partition
_MAGIC = b"CS"


def encode_state(state: CustomerState, partition: int = 0) -> bytes:
    """The customer's state as stored bytes: a versioned header, then zlib of
    the fixed-size record and a small JSON of the named Python values."""
    block, row = state.block, state.row
    extras = {
        "customer_id": state.customer_id,
        "name": state.name,
        "owner": state.owner,
        "segment": state.segment,
        "region": state.region,
        "open_invoices": state.open_invoices,
        "open_complaints": state.open_complaints,
    }
    payload = block.data[row : row + 1].tobytes() + json.dumps(extras).encode()
    return _HEADER.pack(_MAGIC, FORMAT_VERSION, partition) + zlib.compress(payload, 1)


class StateFormatError(ValueError):
    """A stored state that this release cannot read (the message says why)."""


def stored_partition(data: bytes) -> int:
    """The partition a stored state was written for, from its header alone."""
    if len(data) < _HEADER.size or data[:2] != _MAGIC:
        raise StateFormatError("not a churnwatch customer state (no header)")
    return int(_HEADER.unpack_from(data)[2])


def decode_state(data: bytes, block: StateBlock) -> tuple[CustomerState, int]:
    """Load stored bytes into ``block``; returns the state and its partition.

    A record of an older format version is migrated field by field, by name:
    fields that are new get their empty value, fields that moved keep theirs.
    """
    partition = stored_partition(data)
    version = data[2]
    dtype = STATE_DTYPES.get(version)
    if dtype is None:
        raise StateFormatError(
            f"customer state format {version} is newer than this release reads "
            f"(up to {FORMAT_VERSION}): upgrade churnwatch"
        )
    try:
        payload = zlib.decompress(data[_HEADER.size :])
    except zlib.error as exc:
        raise StateFormatError(f"corrupt customer state: {exc}") from exc
    record = np.frombuffer(payload[: dtype.itemsize], dtype)
    extras = json.loads(payload[dtype.itemsize :])
    state = block.state(extras["customer_id"])
    target = block.data[state.row : state.row + 1]
    if dtype == STATE_DTYPE:
        target[:] = record
    else:
        _migrate(record, target)
    state.name = extras["name"]
    state.owner = extras["owner"]
    state.segment = extras["segment"]
    state.region = extras["region"]
    state.open_invoices = extras["open_invoices"]
    state.open_complaints = extras["open_complaints"]
    return state, partition


def _migrate(record: npt.NDArray[np.void], target: npt.NDArray[np.void]) -> None:
    """Copy an older record's fields into ``target`` by name (new fields stay empty)."""
    names = set(target.dtype.names or ())
    for name in record.dtype.names or ():
        if name not in names:
            continue
        if record.dtype[name].shape != target.dtype[name].shape:
            raise StateFormatError(
                f"customer state field {name!r} changed shape "
                f"{record.dtype[name].shape} -> {target.dtype[name].shape}: needs a migration"
            )
        target[name] = record[name]


# --- reading features -----------------------------------------------------------------

QUADRANTS = {
    (True, True): "protect",
    (True, False): "at_risk",
    (False, True): "grow",
    (False, False): "let_go",
}


@dataclass(slots=True)
class Features:
    """What the rules read, as of one moment; names are the business's words.

    Read-only by convention, not frozen: one is built per customer a sweep
    looks at closely, and a frozen dataclass of this size is slow to build.
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


FEATURE_NAMES = tuple(f.name for f in fields(Features))
#: Features that may be unknown (None); NaN in a :class:`FeatureColumns`.
OPTIONAL_FEATURES = frozenset(f.name for f in fields(Features) if "None" in str(f.type))
_INTEGER_FEATURES = frozenset(
    ("orders_total", "overdue_invoices", "open_disputes", "open_complaints", "max_open_severity")
)

#: Features of many customers: name -> one value per customer (NaN for unknown).
FeatureColumns = dict[str, Any]


class _Weeks:
    """Which slots of a ring hold which of the weeks ending with ``now_week``."""

    def __init__(self, head: npt.NDArray[Any], now_week: int, size: int) -> None:
        weeks = np.arange(now_week - size + 1, now_week + 1)
        self.slots = weeks % size
        self.held = (weeks[None, :] <= head[:, None]) & (weeks[None, :] > head[:, None] - size)

    def layout(self, ring: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Each customer's ring laid out as the weeks ending with ``now_week``, oldest
        first; weeks the ring does not hold (yet, or any more) read as zero."""
        return np.where(self.held, ring[:, self.slots], 0)


def weekly_history(
    state: CustomerState, as_of: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The weeks the state holds, ending with ``as_of``'s week, oldest first: week
    numbers (:func:`week_of`), orders and revenue in each (zero where none)."""
    now_week = week_of(as_of)
    weeks = _Weeks(np.array([state.week_head]), now_week, RING_WEEKS)
    return (
        np.arange(now_week - RING_WEEKS + 1, now_week + 1),
        weeks.layout(state.order_counts[None, :])[0].astype(np.int64),
        weeks.layout(state.order_amounts[None, :])[0].astype(np.float64),
    )


def _when(condition: Any, value: Any) -> Any:
    """``value`` where ``condition`` holds, NaN (unknown) elsewhere."""
    return np.where(condition, value, np.nan)


def read_many(
    block: StateBlock,
    rows: npt.NDArray[np.intp],
    as_of: float,
    recent_weeks: int = 8,
    baseline_weeks: int = 26,
    high_value_revenue: float = 50_000.0,
) -> FeatureColumns:
    """Features of the customers at ``rows`` of ``block`` as of ``as_of`` (event time).

    One array per :class:`Features` field; unknown values are NaN. This is the
    one definition of every feature: :func:`read_features` is this for one row.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _read_many(
            block, rows, float(as_of), recent_weeks, baseline_weeks, high_value_revenue
        )


def _read_many(
    block: StateBlock,
    rows: npt.NDArray[np.intp],
    now: float,
    recent_weeks: int,
    baseline_weeks: int,
    high_value_revenue: float,
) -> FeatureColumns:
    now_week = week_of(now)
    col = block.col
    n = len(rows)
    last = RING_WEEKS
    short = SHORT_RING_WEEKS
    first_seen = col["first_seen_at"][rows]
    seen = first_seen != 0
    history_weeks = np.where(seen, (now - first_seen) / WEEK, 0.0)

    # Every window of every ring, laid out as the weeks ending with now_week
    # (positions 0 .. size - 1, oldest first), summed in one compiled pass.
    r0, b0 = last - recent_weeks, last - recent_weeks - baseline_weeks
    # Last year's level around the same weeks (a week either side, scaled to
    # the recent window) smooths out the odd early or late order.
    ly_weeks = recent_weeks + 2 * SEASON_MARGIN_WEEKS
    ly_end = last - 52 + SEASON_MARGIN_WEEKS
    head = col["week_head"]

    def sums(ring: str, *windows: tuple[int, int]) -> list[npt.NDArray[np.float64]]:
        starts = np.array([a for a, _ in windows], np.intp)
        ends = np.array([b for _, b in windows], np.intp)
        out = window_sums(col[ring], head, rows, now_week, starts, ends)
        return list(out.T)

    orders_recent, orders_baseline, orders_4w, orders_13w = sums(
        "order_counts", (r0, last), (b0, r0), (last - 4, last), (last - 13, last)
    )
    amount_recent, amount_baseline_total, amount_ly, amount_13w, revenue_52w = sums(
        "order_amounts",
        (r0, last),
        (b0, r0),
        (ly_end - ly_weeks, ly_end),
        (last - 13, last),
        (last - 52, last),
    )
    inbound_recent, inbound_baseline = sums("inbound_contacts", (r0, last), (b0, r0))
    complaints_4w, complaints_13w = sums(
        "complaint_counts", (short - 4, short), (short - 13, short)
    )
    (returns_13w,) = sums("return_amounts", (short - 13, short))
    (outbound_recent,) = sums("outbound_contacts", (short - recent_weeks, short))
    amount_baseline = amount_baseline_total / baseline_weeks

    ly_first_week = now_week - 52 + SEASON_MARGIN_WEEKS - ly_weeks + 1
    last_year_covered = seen & ((first_seen // WEEK) <= ly_first_week)
    same_weeks_last_year = _when(last_year_covered, amount_ly * recent_weeks / ly_weeks)

    last_order = col["last_order_at"][rows]
    days_since_last_order = _when(last_order != 0, (now - last_order) / DAY)
    gap = col["mean_order_gap_days"][rows]
    orders_total = col["orders_total"][rows]
    regularity = _when((gap > 0) & (orders_total >= 4), np.sqrt(col["order_gap_var"][rows]) / gap)
    tenure_days = np.where(seen, (now - first_seen) / DAY, 0.0)
    loyal = (tenure_days >= 365) & (regularity <= 1.0)
    settled = col["invoices_settled"][rows]
    last_inbound = col["last_inbound_at"][rows]
    last_contact = col["last_contact_at"][rows]
    days_late_recent = col["days_late_recent"][rows]
    days_late_usual = col["days_late_usual"][rows]
    interactions = inbound_recent + outbound_recent

    payments = _payment_features(block, rows, now)
    open_balance = payments["open_balance"]
    credit_limit = col["credit_limit"][rows]
    high_value = revenue_52w >= high_value_revenue
    quadrant = np.array([QUADRANTS[(True, True)]] * n, dtype=object)
    quadrant[high_value & ~loyal] = QUADRANTS[(True, False)]
    quadrant[~high_value & loyal] = QUADRANTS[(False, True)]
    quadrant[~high_value & ~loyal] = QUADRANTS[(False, False)]
    columns: FeatureColumns = {
        "as_of": np.full(n, now),
        "history_weeks": history_weeks,
        "orders_recent": orders_recent,
        "amount_recent": amount_recent,
        "orders_baseline_per_week": orders_baseline / baseline_weeks,
        "amount_baseline_per_week": amount_baseline,
        "amount_same_weeks_last_year": same_weeks_last_year,
        "orders_4w": orders_4w,
        "orders_13w": orders_13w,
        "amount_13w": amount_13w,
        "orders_total": orders_total.astype(np.int64),
        "days_since_last_order": days_since_last_order,
        "mean_order_gap_days": gap,
        "silence_vs_usual_gap": _when(gap > 0, days_since_last_order / gap),
        "longest_gap_past_year_days": window_max(
            col["longest_gaps"], head, rows, now_week, last - PAST_YEAR_WEEKS
        ),
        "amount_trend": _when(
            amount_baseline > 0, amount_recent / (amount_baseline * recent_weeks) - 1
        ),
        **payments,
        "share_paid_late": _when(settled > 0, col["invoices_paid_late"][rows] / settled),
        "days_late_recent": days_late_recent,
        "days_late_usual": days_late_usual,
        "payment_delays_growing": (settled >= 4) & (days_late_recent > days_late_usual + 5),
        "credit_used": _when(credit_limit > 0, open_balance / credit_limit),
        "complaints_4w": complaints_4w,
        "complaints_13w": complaints_13w,
        "complaints_usual_4w": (
            4 * (col["complaints_total"][rows] - complaints_4w) / np.maximum(history_weeks - 4, 4)
        ),
        "returns_13w": returns_13w,
        "returns_share_13w": _when(amount_13w > 0, returns_13w / amount_13w),
        "inbound_recent": inbound_recent,
        "inbound_baseline_per_week": inbound_baseline / baseline_weeks,
        "days_since_last_inbound": _when(last_inbound != 0, (now - last_inbound) / DAY),
        "days_since_last_contact": _when(last_contact != 0, (now - last_contact) / DAY),
        "outbound_recent": outbound_recent,
        "inbound_share_recent": _when(interactions > 0, inbound_recent / interactions),
        "revenue_52w": revenue_52w,
        "tenure_days": tenure_days,
        "order_regularity": regularity,
        "quadrant": quadrant,
    }
    return columns


def _payment_features(
    block: StateBlock, rows: npt.NDArray[np.intp], now: float
) -> dict[str, npt.NDArray[Any]]:
    """Aging of the open invoices, and the open complaints, of the customers at ``rows``.

    Every open invoice (complaint) of the block in one flat array, aggregated
    per customer with ``bincount``, which adds in list order as a loop would.
    """
    n = len(rows)
    position = np.full(block.size, -1, np.int64)
    position[rows] = np.arange(n)
    out: dict[str, npt.NDArray[Any]] = {}

    owners, invoices = _flat(block.invoices, position)
    amounts = _column(invoices, 1)
    due = _column(invoices, 2)
    overdue = due < now
    days_past_due = np.where(overdue, (now - due) / DAY, 0.0)
    bucket = np.select(
        [days_past_due <= 30, days_past_due <= 60, days_past_due <= 90], [0, 1, 2], 3
    )
    out["open_balance"] = np.bincount(owners, weights=amounts, minlength=n)
    aged = [
        np.bincount(owners, weights=np.where(overdue & (bucket == k), amounts, 0.0), minlength=n)
        for k in range(4)
    ]
    out["overdue_1_30"], out["overdue_31_60"], out["overdue_61_90"], out["overdue_over_90"] = aged
    out["overdue_amount"] = aged[0] + aged[1] + aged[2] + aged[3]
    max_dpd = np.zeros(n)
    np.maximum.at(max_dpd, owners, days_past_due)
    out["max_days_past_due"] = max_dpd
    out["overdue_invoices"] = np.bincount(owners, weights=overdue, minlength=n).astype(np.int64)

    owners, complaints = _flat(block.complaints, position)
    opened = _column(complaints, 1)
    severity = _column(complaints, 2).astype(np.int64)
    billing = np.array([complaint[3:4] == ["billing"] for complaint in complaints], dtype=bool)
    count = np.bincount(owners, minlength=n)
    oldest = np.full(n, np.inf)
    np.minimum.at(oldest, owners, opened)
    out["open_complaints"] = count.astype(np.int64)
    out["oldest_open_complaint_days"] = np.where(
        (count > 0) & (oldest != 0), (now - oldest) / DAY, 0.0
    )
    highest = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(highest, owners, severity)
    out["max_open_severity"] = np.where(count > 0, highest, 0)
    out["open_disputes"] = np.bincount(owners, weights=billing, minlength=n).astype(np.int64)
    return out


def _flat(
    table: dict[int, list[list[Any]]], position: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], list[list[Any]]]:
    """The entries of the customers ``position`` picks, each customer's in list
    order (the order a loop over them would add in), and each one's position."""
    count = len(table)
    where = position[np.fromiter(table, dtype=np.int64, count=count)]
    lengths = np.fromiter(map(len, table.values()), dtype=np.int64, count=count)
    picked = where >= 0
    entries = list(chain.from_iterable(compress(table.values(), picked.tolist())))
    return np.repeat(where[picked], lengths[picked]), entries


def _column(entries: list[list[Any]], index: int) -> npt.NDArray[np.float64]:
    """One field of every entry, as numbers."""
    return np.fromiter(map(itemgetter(index), entries), dtype=np.float64, count=len(entries))


def features_of(columns: FeatureColumns, i: int) -> Features:
    """The :class:`Features` of the ``i``-th customer of ``columns``."""
    values: dict[str, Any] = {}
    for name in FEATURE_NAMES:
        value = columns[name][i]
        if name in OPTIONAL_FEATURES:
            value = float(value)
            values[name] = None if math.isnan(value) else value
        elif name in _INTEGER_FEATURES:
            values[name] = int(value)
        elif name == "payment_delays_growing":
            values[name] = bool(value)
        elif name == "quadrant":
            values[name] = str(value)
        else:
            values[name] = float(value)
    return Features(**values)


def read_features(
    state: CustomerState,
    as_of: datetime | float,
    recent_weeks: int = 8,
    baseline_weeks: int = 26,
    high_value_revenue: float = 50_000.0,
) -> Features:
    """Features of one customer as of ``as_of`` (event time): :func:`read_many` for one row."""
    now = as_of if isinstance(as_of, float | int) else to_epoch(as_of)
    columns = read_many(
        state.block,
        np.array([state.row]),
        float(now),
        recent_weeks,
        baseline_weeks,
        high_value_revenue,
    )
    return features_of(columns, 0)
