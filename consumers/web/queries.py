"""What the web inbox reads from and writes to the alert ledger, and who may see what.

A rep sees the customers they own (the owner the pipeline reports, unless the
customer was handed over since); a manager those owned by their team's reps
(everyone's without a team); an admin everyone's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import (
    Action,
    Customer,
    Episode,
    Notification,
    Snooze,
    User,
    active_snoozes,
    current_owner,
)
from churnwatch.consumers.alerts.messages import loss
from churnwatch.consumers.alerts.tasks import TaskCounts, task_counts
from churnwatch.consumers.alerts.verdicts import Verdicts, latest_verdicts, summarise
from churnwatch.consumers.web.live import LiveStates, Summary
from churnwatch.pipeline.events import WARNING_TYPES
from churnwatch.pipeline.state import SEVERITIES


def owners_in_view(session: Session, user: User) -> set[str] | None:
    """The owners whose customers ``user`` may see; None: everyone's."""
    if user.role == "admin" or (user.role == "manager" and not user.team):
        return None
    if user.role == "manager":
        mates = session.scalars(select(User.owner).where(User.team == user.team))
        return {owner for owner in mates if owner} | ({user.owner} if user.owner else set())
    return {user.owner} if user.owner else set()


def handovers(session: Session) -> dict[str, str]:
    """Each handed-over customer's new owner (the latest hand-over wins): for lists,
    what :func:`~consumers.alerts.ledger.current_owner` is for one customer."""
    query = select(Action.customer_id, Action.detail).where(Action.kind == "handed_over")
    return {cid: owner for cid, owner in session.execute(query.order_by(Action.id))}


def owner_of(moved: dict[str, str], customer_id: str, *reported: str) -> str:
    """The customer's owner: the last hand-over's, else the first owner reported
    (the customers topic's, then the warning's)."""
    return moved.get(customer_id) or next((owner for owner in reported if owner), "")


#: The columns of an episode a list shows (read as plain rows: fast for thousands).
LISTED = (
    Episode.warning_id,
    Episode.customer_id,
    Episode.customer_name,
    Episode.owner,
    Episode.segment,
    Episode.warning_type,
    Episode.severity,
    Episode.opened_at,
    Episode.summary,
    Episode.action,
    Episode.churn_probability,
    Episode.received_at,
    Episode.evidence["revenue_52w"].as_float().label("revenue_52w"),
)


@dataclass
class Row:
    """One open warning in a list, with its customer's figures."""

    episode: Any  # a row of LISTED
    owner: str
    region: str
    segment: str
    quadrant: str
    live: Summary | None  # the customer's live figures (None: no worker holds it)
    loss: float  # this warning's expected loss
    customer_loss: float  # the customer's highest, which orders the list
    acknowledged: bool
    new: bool

    @property
    def health(self) -> int | None:
        """The customer's health score now."""
        return self.live.health if self.live else None

    @property
    def health_trend_7d(self) -> int | None:
        return self.live.health_trend_7d if self.live else None

    @property
    def health_moved(self) -> tuple[tuple[str, int], ...]:
        """The parts of its score that moved most in a week."""
        return self.live.health_moved if self.live else ()


@dataclass
class Filters:
    warning_type: str = ""
    severity: str = ""
    segment: str = ""
    quadrant: str = ""
    acknowledged: str = ""  # "", "yes", "no"
    search: str = ""

    def keeps(self, row: Row) -> bool:
        e = row.episode
        if self.warning_type and e.warning_type != self.warning_type:
            return False
        if self.severity and e.severity != self.severity:
            return False
        if self.segment and row.segment != self.segment:
            return False
        if self.quadrant and row.quadrant != self.quadrant:
            return False
        if self.acknowledged and row.acknowledged != (self.acknowledged == "yes"):
            return False
        needle = self.search.strip().lower()
        return not needle or needle in e.customer_id.lower() or needle in e.customer_name.lower()


@dataclass
class Account:
    """One customer in the inbox: its open warnings (those the filters keep, most
    severe first) under its health score."""

    warnings: list[Row]

    @property
    def first(self) -> Row:
        return self.warnings[0]

    @property
    def customer_id(self) -> str:
        return str(self.first.episode.customer_id)

    @property
    def loss(self) -> float:
        return self.first.customer_loss

    @property
    def new(self) -> bool:
        return any(r.new for r in self.warnings)

    @property
    def acknowledged(self) -> bool:
        return all(r.acknowledged for r in self.warnings)


#: How the inbox may order its accounts.
ORDERS = ("loss", "health")


def accounts(rows: list[Row], order: str = "loss") -> list[Account]:
    """The rows grouped by customer: highest expected loss first, or the lowest
    health score first (customers no worker holds last), ties by expected loss."""
    grouped: dict[str, list[Row]] = {}
    for r in rows:
        grouped.setdefault(r.episode.customer_id, []).append(r)
    listed = []
    for warnings in grouped.values():
        warnings.sort(key=lambda r: (-SEVERITIES.index(r.episode.severity), -r.loss))
        listed.append(Account(warnings))
    if order == "health":
        listed.sort(
            key=lambda a: (a.first.health is None, a.first.health or 0, -a.loss, a.customer_id)
        )
    else:
        listed.sort(key=lambda a: (-a.loss, a.customer_id))
    return listed


@dataclass
class Inbox:
    rows: list[Row]  # the open warnings the filters keep
    counts: Counter[str]  # open warnings per type, before the filters
    segments: list[str]
    quadrants: list[str]
    accounts: list[Account]


@dataclass
class Book:
    """What every list needs about the customers, read once per request."""

    allowed: set[str] | None  # the owners in view (None: everyone's)
    customers: dict[str, Any]  # id -> (customer_id, owner, segment, region)
    moved: dict[str, str]  # hand-overs
    acked: set[str]  # acknowledged warning ids

    @classmethod
    def read(cls, session: Session, user: User) -> Book:
        columns = (Customer.customer_id, Customer.owner, Customer.segment, Customer.region)
        return cls(
            allowed=owners_in_view(session, user),
            customers={c.customer_id: c for c in session.execute(select(*columns))},
            moved=handovers(session),
            acked=set(
                session.scalars(
                    select(Action.warning_id).where(
                        Action.kind == "acknowledged", Action.warning_id.is_not(None)
                    )
                )
            ),
        )

    def owner(self, customer_id: str, reported: str) -> str:
        customer = self.customers.get(customer_id)
        return owner_of(self.moved, customer_id, customer.owner if customer else "", reported)

    def sees(self, owner: str) -> bool:
        return self.allowed is None or owner in self.allowed


def open_rows(
    session: Session,
    user: User,
    live: LiveStates | None,
    seen_before: datetime | None = None,
    book: Book | None = None,
) -> list[Row]:
    """Every open warning ``user`` may see, highest expected loss first."""
    book = book or Book.read(session, user)
    episodes = session.execute(select(*LISTED).where(Episode.status == "open")).all()
    visible: list[tuple[Any, str, Any]] = []
    for e in episodes:
        owner = book.owner(e.customer_id, e.owner)
        if book.sees(owner):
            visible.append((e, owner, book.customers.get(e.customer_id)))
    summaries: dict[str, Summary] = (
        live.summaries({e.customer_id for e, _, _ in visible}) if live else {}
    )
    losses = {e.warning_id: loss(e.revenue_52w or 0.0, e.churn_probability) for e, _, _ in visible}
    customer_loss: dict[str, float] = defaultdict(float)
    for e, _, _ in visible:
        customer_loss[e.customer_id] = max(customer_loss[e.customer_id], losses[e.warning_id])
    rows = [
        Row(
            episode=e,
            owner=owner,
            region=customer.region if customer else "",
            segment=e.segment or (customer.segment if customer else ""),
            quadrant=summaries[e.customer_id].quadrant if e.customer_id in summaries else "",
            live=summaries.get(e.customer_id),
            loss=losses[e.warning_id],
            customer_loss=customer_loss[e.customer_id],
            acknowledged=e.warning_id in book.acked,
            new=seen_before is None or e.received_at > seen_before,
        )
        for e, owner, customer in visible
    ]
    rows.sort(key=lambda r: (-r.customer_loss, r.episode.customer_id, -r.loss))
    return rows


def inbox(
    session: Session,
    user: User,
    live: LiveStates | None,
    filters: Filters,
    seen_before: datetime | None,
    order: str = "loss",
) -> Inbox:
    rows = open_rows(session, user, live, seen_before)
    kept = [r for r in rows if filters.keeps(r)]
    return Inbox(
        rows=kept,
        counts=Counter(r.episode.warning_type for r in rows),
        segments=sorted({r.segment for r in rows if r.segment}),
        quadrants=sorted({r.quadrant for r in rows if r.quadrant}),
        accounts=accounts(kept, order),
    )


def may_see(session: Session, user: User, customer_id: str) -> bool | None:
    """Whether ``user`` may see the customer; None if the ledger has never heard of it."""
    customer = session.get(Customer, customer_id)
    episode = session.scalar(select(Episode).where(Episode.customer_id == customer_id).limit(1))
    if customer is None and episode is None:
        return None
    reported = (customer.owner if customer else "") or (episode.owner if episode else "")
    allowed = owners_in_view(session, user)
    return allowed is None or current_owner(session, customer_id, reported) in allowed


@dataclass
class CustomerPage:
    customer_id: str
    name: str
    owner: str
    segment: str
    region: str
    episodes: list[Episode]
    notifications: list[Notification]
    actions: list[Action]
    outcomes: dict[str, str]  # warning id -> latest outcome
    snoozes: list[Snooze]


def customer_page(session: Session, customer_id: str, now: datetime) -> CustomerPage:
    customer = session.get(Customer, customer_id)
    episodes = list(
        session.scalars(
            select(Episode)
            .where(Episode.customer_id == customer_id)
            .order_by(Episode.opened_at.desc())
        )
    )
    latest = episodes[0] if episodes else None
    reported = (customer.owner if customer else "") or (latest.owner if latest else "")
    return CustomerPage(
        customer_id=customer_id,
        name=(customer.name if customer else "") or (latest.customer_name if latest else ""),
        owner=current_owner(session, customer_id, reported),
        segment=(customer.segment if customer else "") or (latest.segment if latest else ""),
        region=customer.region if customer else "",
        episodes=episodes,
        notifications=list(
            session.scalars(
                select(Notification)
                .where(Notification.customer_id == customer_id)
                .order_by(Notification.created_at.desc())
            )
        ),
        actions=list(
            session.scalars(
                select(Action).where(Action.customer_id == customer_id).order_by(Action.id.desc())
            )
        ),
        outcomes=latest_verdicts(session, [e.warning_id for e in episodes]),
        snoozes=active_snoozes(session, customer_id, now),
    )


@dataclass
class Group:
    name: str
    warnings: int = 0
    customers: set[str] = field(default_factory=set)
    value_at_risk: float = 0.0


@dataclass
class TypeOutcomes:
    warning_type: str
    warnings: int = 0  # every one raised (what the outcomes are counted against)
    still_open: int = 0
    acknowledged: int = 0
    acted_on: int = 0
    saved: int = 0
    lost: int = 0
    false_alarms: int = 0

    @property
    def precision(self) -> float | None:
        judged = self.acted_on + self.false_alarms
        return None if not judged else self.acted_on / judged


@dataclass
class Team:
    by_owner: list[Group]
    by_segment: list[Group]
    by_region: list[Group]
    outcomes: list[TypeOutcomes]
    rows: list[Row]
    #: the team's precision by the month its judged warnings opened in, oldest first
    by_month: dict[str, Verdicts] = field(default_factory=dict)
    #: each owner's tasks: open, overdue, done, dropped
    tasks: dict[str, TaskCounts] = field(default_factory=dict)


#: Outcomes that mean someone acted on a warning.
ACTED = ("contacted", "saved", "lost", "acted", "already_known", "not_reachable")


def team(session: Session, user: User, live: LiveStates | None) -> Team:
    book = Book.read(session, user)
    rows = open_rows(session, user, live, book=book)
    groups: dict[str, dict[str, Group]] = {"owner": {}, "segment": {}, "region": {}}
    for r in rows:
        for dimension, name in (("owner", r.owner), ("segment", r.segment), ("region", r.region)):
            group = groups[dimension].setdefault(name or "-", Group(name or "-"))
            group.warnings += 1
            # a customer's value counts once per group, at its highest expected loss
            if r.episode.customer_id not in group.customers:
                group.customers.add(r.episode.customer_id)
                group.value_at_risk += r.customer_loss

    outcomes = latest_verdicts(session)
    per_type: dict[str, TypeOutcomes] = {t: TypeOutcomes(t) for t in WARNING_TYPES}
    everything = select(
        Episode.warning_id,
        Episode.customer_id,
        Episode.owner,
        Episode.warning_type,
        Episode.status,
        Episode.opened_at,
    )
    judged: list[tuple[str, datetime, str]] = []
    for e in session.execute(everything):
        if not book.sees(book.owner(e.customer_id, e.owner)):
            continue
        t = per_type.setdefault(e.warning_type, TypeOutcomes(e.warning_type))
        t.warnings += 1
        t.still_open += e.status == "open"
        t.acknowledged += e.warning_id in book.acked
        verdict = outcomes.get(e.warning_id)
        t.acted_on += verdict in ACTED
        t.saved += verdict == "saved"
        t.lost += verdict == "lost"
        t.false_alarms += verdict == "false_alarm"
        if verdict is not None:
            judged.append((e.warning_type, e.opened_at, verdict))

    def ranked(dimension: str) -> list[Group]:
        return sorted(groups[dimension].values(), key=lambda g: -g.value_at_risk)

    return Team(
        ranked("owner"),
        ranked("segment"),
        ranked("region"),
        list(per_type.values()),
        rows,
        summarise(judged).by_month,
        {o: c for o, c in task_counts(session, datetime.now(UTC)).items() if book.sees(o)},
    )
