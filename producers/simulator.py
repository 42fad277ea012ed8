"""Simulated customers with known ground truth, produced to Kafka in event-time order.

Run: ``churnwatch simulate --customers 300 --seed 7`` (see ``--help``).

Profiles. Customers that never churn: ``steady`` (regular rhythm, a summer
holiday, the odd late payment), ``seasonal`` (a quiet winter season every
year) and ``one_off`` (regular buyers who once place a very large order).
Churners, each leaving its own way after an onset date: ``shrinking`` (orders
get smaller and rarer), ``late_payer`` (pays later and later, then stops),
``complainer`` (complaints pile up unresolved), ``cooling`` (stops reaching
out, then stops ordering) and ``silent`` (everything stops at once).
The same seed always gives the same customers and events.
"""

from __future__ import annotations

import csv
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from churnwatch.core.topics import Topic
from churnwatch.pipeline.events import (
    TOPIC_OF_TYPE,
    ComplaintOpened,
    ComplaintResolved,
    Contact,
    CustomerEvent,
    CustomerUpdated,
    InvoiceIssued,
    OrderPlaced,
    PaymentReceived,
    encode_event,
)

STEADY_PROFILES = ("steady", "seasonal", "one_off")
CHURN_PROFILES = ("shrinking", "late_payer", "complainer", "cooling", "silent")
PROFILE_WEIGHTS = {
    "steady": 0.44,
    "seasonal": 0.13,
    "one_off": 0.13,
    "shrinking": 0.06,
    "late_payer": 0.06,
    "complainer": 0.06,
    "cooling": 0.06,
    "silent": 0.06,
}
SEGMENTS = ("key_account", "standard", "standard", "small")
REGIONS = ("north", "south", "east", "west")


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message to produce: event time, logical topic, key and payload."""

    ts: datetime
    topic: Topic
    key: str
    payload: bytes
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class GroundTruth:
    customer_id: str
    profile: str
    churned: bool
    onset: datetime | None  # when the change in behaviour starts
    churn_date: datetime | None  # the last order

    def as_row(self) -> dict[str, str]:
        return {
            "customer_id": self.customer_id,
            "profile": self.profile,
            "churned": str(self.churned).lower(),
            "onset": self.onset.isoformat() if self.onset else "",
            "churn_date": self.churn_date.isoformat() if self.churn_date else "",
        }


class _Customer:
    """Generates one customer's events; all randomness from its own RNG."""

    def __init__(self, index: int, profile: str, start: datetime, days: int, seed: int) -> None:
        self.rng = random.Random(f"{seed}-{index}")
        self.customer_id = f"C{index:05d}"
        self.profile = profile
        self.start = start
        self.end = start + timedelta(days=days)
        self.gap_days = self.rng.choice((7, 7, 14, 14, 21, 30))
        self.typical_amount = round(self.rng.lognormvariate(7.0, 0.8), 2)
        self.inbound_every_days = self.rng.uniform(6, 14)
        self.late_payer_habit = self.rng.random() < 0.15
        churns = profile in CHURN_PROFILES
        onset_day = self.rng.uniform(0.52, 0.78) * days if churns else None
        self.onset = start + timedelta(days=onset_day) if onset_day is not None else None
        self.events: list[SimEvent] = []
        self.last_order: datetime | None = None
        self._seq = 0

    # -- helpers -------------------------------------------------------------

    def _eid(self, kind: str) -> str:
        self._seq += 1
        return f"{self.customer_id}-{kind}-{self._seq}"

    def _emit(self, event: CustomerEvent) -> None:
        if event.occurred_at < self.end:
            self.events.append(
                SimEvent(
                    event.occurred_at,
                    TOPIC_OF_TYPE[event.type],
                    self.customer_id,
                    encode_event(event),
                )
            )

    def _days_since_onset(self, t: datetime) -> float | None:
        if self.onset is None or t < self.onset:
            return None
        return (t - self.onset).total_seconds() / 86400

    # -- behaviour -------------------------------------------------------------

    def generate(self, owner: str) -> GroundTruth:
        rng = self.rng
        self._emit(
            CustomerUpdated(
                event_id=self._eid("cust"),
                customer_id=self.customer_id,
                occurred_at=self.start,
                name=f"{rng.choice(NAME_A)} {rng.choice(NAME_B)} {self.customer_id[-3:]}",
                owner=owner,
                segment=rng.choice(SEGMENTS),
                region=rng.choice(REGIONS),
                credit_limit=round(self.typical_amount * 6, -2),
            )
        )
        self._orders()
        self._contacts()
        self._background_complaints()
        return GroundTruth(
            self.customer_id,
            self.profile,
            self.onset is not None,
            self.onset,
            self.last_order if self.onset is not None else None,
        )

    def _order_gap(self, t: datetime) -> float | None:
        """Days until the next order after ``t``; None when the customer has stopped."""
        gap = self.gap_days * self.rng.uniform(0.75, 1.25)
        since = self._days_since_onset(t)
        if self.profile == "seasonal" and t.month in (12, 1, 2):
            # Quiet winter: orders thin out, and the rhythm is back in March.
            season_end = datetime(t.year + (t.month == 12), 3, 1, tzinfo=UTC)
            back = (season_end - t).total_seconds() / 86400 + gap * self.rng.uniform(0, 1)
            gap = min(gap * 4, back)
        if since is None:
            return gap
        stop_after = {"shrinking": 110, "late_payer": 80, "complainer": 60, "cooling": 55}
        if self.profile == "silent" or since > stop_after.get(self.profile, 0):
            return None
        if self.profile == "shrinking":
            gap *= 1 + since / 40
        if self.profile == "complainer":
            gap *= 1 + since / 45
        return gap

    def _order_amount(self, t: datetime) -> float:
        amount = self.typical_amount * self.rng.lognormvariate(0, 0.25)
        since = self._days_since_onset(t)
        if self.profile == "shrinking" and since is not None:
            amount *= max(0.25, 1 - since / 120)
        return round(amount, 2)

    def _orders(self) -> None:
        rng = self.rng
        t = self.start + timedelta(days=rng.uniform(0, self.gap_days), hours=rng.uniform(8, 17))
        holiday_start = self.start + timedelta(days=rng.uniform(200, 260))
        big_order_day = rng.uniform(0.3, 0.7)
        big_done = False
        n = 0
        while t < self.end:
            if self.profile == "steady" and holiday_start <= t < holiday_start + timedelta(days=18):
                t = holiday_start + timedelta(days=18, hours=rng.uniform(0, 8))
                continue
            n += 1
            amount = self._order_amount(t)
            progress = (t - self.start) / (self.end - self.start)
            if self.profile == "one_off" and not big_done and progress >= big_order_day:
                amount = round(amount * rng.uniform(15, 30), 2)
                big_done = True
            order_id = f"SO-{self.customer_id}-{n}"
            self._emit(
                OrderPlaced(
                    event_id=self._eid("ord"),
                    customer_id=self.customer_id,
                    occurred_at=t,
                    order_id=order_id,
                    amount=amount,
                )
            )
            self.last_order = t
            self._invoice_and_payment(t + timedelta(hours=2), n, amount)
            gap = self._order_gap(t)
            if gap is None:
                break
            t += timedelta(days=gap)

    def _invoice_and_payment(self, t: datetime, n: int, amount: float) -> None:
        rng = self.rng
        invoice_id = f"INV-{self.customer_id}-{n}"
        due = t + timedelta(days=30)
        self._emit(
            InvoiceIssued(
                event_id=self._eid("inv"),
                customer_id=self.customer_id,
                occurred_at=t,
                invoice_id=invoice_id,
                amount=amount,
                due_date=due,
            )
        )
        delay = rng.uniform(-12, 3)
        if self.late_payer_habit and rng.random() < 0.3:
            delay = rng.uniform(3, 18)
        since = self._days_since_onset(t)
        if self.profile == "late_payer" and since is not None:
            if since > 45:
                return  # stops paying
            delay = 5 + since * 0.9 + rng.uniform(0, 5)
        self._emit(
            PaymentReceived(
                event_id=self._eid("pay"),
                customer_id=self.customer_id,
                occurred_at=max(due + timedelta(days=delay), t + timedelta(days=1)),
                invoice_id=invoice_id,
                amount=amount,
            )
        )

    def _contacts(self) -> None:
        rng = self.rng
        for direction, every in (("inbound", self.inbound_every_days), ("outbound", 14.0)):
            # Contacts are semi-regular (gamma gaps, CV ~0.6), like real account routines.
            t = self.start + timedelta(days=rng.uniform(0, every))
            while t < self.end:
                since = self._days_since_onset(t)
                stop_inbound = {"cooling": 0, "silent": 0, "shrinking": 70, "complainer": 50}
                stopped = (
                    direction == "inbound"
                    and since is not None
                    and since >= stop_inbound.get(self.profile, 90)
                )
                if not stopped:
                    channel = (
                        rng.choice(("call", "email", "reply", "login"))
                        if direction == "inbound"
                        else rng.choice(("call", "email", "visit", "meeting"))
                    )
                    self._emit(
                        Contact(
                            event_id=self._eid("con"),
                            customer_id=self.customer_id,
                            occurred_at=t,
                            channel=channel,
                            direction=direction,
                        )
                    )
                t += timedelta(days=rng.gammavariate(3.0, every / 3.0))

    def _background_complaints(self) -> None:
        rng = self.rng
        t = self.start + timedelta(days=rng.expovariate(1 / 150))
        n = 0
        while t < self.end:
            since = self._days_since_onset(t)
            piling = self.profile == "complainer" and since is not None and since < 90
            n += 1
            complaint_id = f"T-{self.customer_id}-{n}"
            self._emit(
                ComplaintOpened(
                    event_id=self._eid("cmp"),
                    customer_id=self.customer_id,
                    occurred_at=t,
                    complaint_id=complaint_id,
                    category=rng.choice(("price", "product", "service", "delivery")),
                    severity=rng.choice((2, 3, 4)) if piling else rng.choice((1, 1, 2)),
                    return_amount=(
                        round(self.typical_amount * rng.uniform(0.2, 0.8), 2)
                        if rng.random() < (0.4 if piling else 0.1)
                        else 0.0
                    ),
                )
            )
            if not piling:
                self._emit(
                    ComplaintResolved(
                        event_id=self._eid("res"),
                        customer_id=self.customer_id,
                        occurred_at=t + timedelta(days=rng.uniform(1, 10)),
                        complaint_id=complaint_id,
                    )
                )
            if self.profile == "complainer" and since is None and self.onset and t < self.onset:
                t = min(t + timedelta(days=rng.expovariate(1 / 150)), self.onset)
            else:
                t += timedelta(days=rng.uniform(5, 14) if piling else rng.expovariate(1 / 150))


NAME_A = ("Alpine", "Baltic", "Cedar", "Delta", "Evergreen", "Falcon", "Granite", "Harbor")
NAME_B = ("Hardware", "Supplies", "Traders", "Wholesale", "Retail", "Distribution", "Goods")


def _malformed_events(rng: random.Random, start: datetime, days: int, count: int) -> list[SimEvent]:
    """Deliberately broken messages, to show that they land in the dead-letter topic."""
    kinds = [
        (Topic.ORDERS, b'{"type": "order_placed", "customer_id": "C00001", "amount": 12'),
        (
            Topic.ORDERS,
            b'{"type": "order_placed", "event_id": "bad-neg", "customer_id": "C00001", '
            b'"occurred_at": "2025-05-01T10:00:00+00:00", "order_id": "X", "amount": -40}',
        ),
        (
            Topic.PAYMENTS,
            b'{"type": "invoice_issued", "event_id": "bad-naive", "customer_id": "C00001", '
            b'"occurred_at": "2025-05-01T10:00:00", "invoice_id": "I", "amount": 5, '
            b'"due_date": "2025-06-01T00:00:00+00:00"}',
        ),
        (Topic.ENGAGEMENT, b'{"type": "telepathy", "event_id": "bad-type", "customer_id": "C1"}'),
        (Topic.COMPLAINTS, b"\xff\xfe not json at all"),
    ]
    out = []
    for i in range(count):
        topic, payload = kinds[i % len(kinds)]
        ts = start + timedelta(days=rng.uniform(0.1, 0.9) * days)
        out.append(SimEvent(ts, topic, "C00001", payload, malformed=True))
    return out


def simulate(
    customers: int, seed: int, start: datetime, days: int, owners: int, malformed: int
) -> tuple[list[SimEvent], list[GroundTruth]]:
    """All events of a simulated book of business, sorted by event time, and the truth."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(seed)
    profiles = list(PROFILE_WEIGHTS)
    weights = list(PROFILE_WEIGHTS.values())
    owner_names = [f"rep{i + 1}@sales.example.com" for i in range(owners)]
    per_customer: list[list[SimEvent]] = []
    truth: list[GroundTruth] = []
    for index in range(1, customers + 1):
        profile = rng.choices(profiles, weights)[0]
        sim = _Customer(index, profile, start, days, seed)
        truth.append(sim.generate(owner_names[(index - 1) % owners]))
        per_customer.append(sorted(sim.events, key=lambda e: e.ts))
    per_customer.append(sorted(_malformed_events(rng, start, days, malformed), key=lambda e: e.ts))
    events = list(heapq.merge(*per_customer, key=lambda e: e.ts))
    return events, truth


def iter_paced(events: list[SimEvent], days_per_second: float) -> Iterator[tuple[SimEvent, float]]:
    """Yield events with the wall-clock second (from now) at which each is due."""
    if not events:
        return
    first = events[0].ts
    for event in events:
        due = (
            (event.ts - first).total_seconds() / 86400 / days_per_second
            if days_per_second > 0
            else 0.0
        )
        yield event, due


def write_ground_truth(truth: list[GroundTruth], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["customer_id", "profile", "churned", "onset", "churn_date"]
        )
        writer.writeheader()
        for row in truth:
            writer.writerow(row.as_row())


def read_ground_truth(path: Path) -> list[GroundTruth]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                GroundTruth(
                    row["customer_id"],
                    row["profile"],
                    row["churned"] == "true",
                    datetime.fromisoformat(row["onset"]) if row["onset"] else None,
                    datetime.fromisoformat(row["churn_date"]) if row["churn_date"] else None,
                )
            )
    return rows


def parse_start(text: str) -> datetime:
    """A start date (YYYY-MM-DD) as midnight UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
