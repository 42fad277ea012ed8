"""Per-customer state: one fixed-size record per customer (pure: no I/O, no Faust).

The customers of one partition (or of a whole batch run) live in one
:class:`StateBlock`: a numpy structured array of fixed-size records (weekly
buckets in rings, running averages, the open episodes, the last event ids
seen) plus a few short Python values per customer (name, owner, region, open
invoices and complaints); :class:`CustomerState` is a view of one row.
Events change it (:mod:`pipeline.apply`), features are read from it
(:mod:`pipeline.features`), and it is stored in a versioned format
(:mod:`pipeline.state_format`).

Times are UTC epoch seconds inside the state; amounts in the rings are whole
cents rounded as floats, summed week by week in order, so every feature is
the same number however many customers are read at once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from churnwatch.core.topics import EVENT_TOPICS
from churnwatch.pipeline.events import (
    WARNING_TYPES,
    Severity,
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
MAX_WEEKLY_COUNT = 65_535

#: Version of the stored record; bump it when :data:`STATE_DTYPE` changes and
#: keep the old dtype in :data:`STATE_DTYPES` so old records migrate by name.
FORMAT_VERSION = 5
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
_FIELDS_V2 = STATE_DTYPE
#: Beside the ring of the last event ids (format version 3): their event times
#: (whole seconds), the latest event time among the ids that left the ring, and
#: the newest event time applied. An event that is not in the ring but is no
#: newer than an id that left it, and older than the newest applied, may be a
#: copy of one the ring no longer holds (``pipeline.apply``).
STATE_DTYPE = np.dtype(
    [
        *_FIELDS_V2.descr,
        ("event_id_times", "<u4", (RECENT_EVENT_IDS,)),
        ("evicted_event_at", "<f8"),
        ("last_event_at", "<f8"),
    ]
)
_FIELDS_V3 = STATE_DTYPE
#: The health score (format version 4, ``pipeline/health.py``): the score now and
#: per family, the families at the end of the week before, and the score of each
#: of the last weeks in a ring indexed by week number (``health_week``: the week
#: of the newest; -1 before any sweep). 255: not known.
HEALTH_WEEKS = 16
STATE_DTYPE = np.dtype(
    [
        *_FIELDS_V3.descr,
        ("health_score", "u1"),
        ("health_parts", "u1", (5,)),
        ("health_parts_before", "u1", (5,)),
        ("health_weeks", "u1", (HEALTH_WEEKS,)),
        ("health_week", "<i4"),
    ]
)
_FIELDS_V4 = STATE_DTYPE
#: The model's churn probability as the last sweep that kept it scored it, and
#: that sweep's time (format version 5; NaN and 0 before the model scored the
#: customer): kept with the health score, and whenever it moves 2 points.
STATE_DTYPE = np.dtype(
    [
        *_FIELDS_V4.descr,
        ("churn_probability", "<f4"),
        ("churn_scored_at", "<f8"),
    ]
)
#: Every stored format's fixed part, by version: decoding migrates by field name.
STATE_DTYPES: dict[int, np.dtype[Any]] = {
    1: _FIELDS_V1,
    2: _FIELDS_V2,
    3: _FIELDS_V3,
    4: _FIELDS_V4,
    5: STATE_DTYPE,
}
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

#: The long (RING_WEEKS) and short (SHORT_RING_WEEKS) weekly rings of the record.
RINGS = ("order_counts", "order_amounts", "inbound_contacts", "longest_gaps")
SHORT_RINGS = ("complaint_counts", "return_amounts", "outbound_contacts")


def week_of(ts: float) -> int:
    """Week number since the epoch (weeks start on Thursday 00:00 UTC)."""
    return int(ts // WEEK)


def to_epoch(moment: datetime) -> float:
    return moment.timestamp()


def _blank_record() -> npt.NDArray[np.void]:
    record = np.zeros(1, STATE_DTYPE)
    record["week_head"] = -1
    record["episode_severity"] = -1
    for name in ("health_score", "health_parts", "health_parts_before", "health_weeks"):
        record[name] = 255
    record["health_week"] = -1
    record["churn_probability"] = np.nan
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
        evicted_event_at: float
        last_event_at: float
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
        return stored_payload(self) == stored_payload(other)

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


def stored_payload(state: CustomerState) -> bytes:
    """What a stored state holds (see :func:`pipeline.state_format.encode_state`):
    the fixed-size record, then a small JSON of the named Python values."""
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
    return block.data[row : row + 1].tobytes() + json.dumps(extras).encode()
