"""What the team said of its warnings: the ledger's verdicts (the web inbox's
outcomes, a one-click link's, ``churnwatch alerts feedback``), summed per
warning type and per month the warnings opened in. The team view shows the
months as its precision trend; ``churnwatch train`` and ``churnwatch tune``
print the types beside their own figures, so the model and the thresholds are
read against what the people who got the warnings judged.

A warning's verdict is its latest. Every verdict but ``false_alarm`` says
someone acted on it; the team's precision is the share of judged warnings
that were not false alarms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import Episode, Feedback, open_ledger, sqlite_path


@dataclass
class Verdicts:
    judged: int = 0
    false_alarms: int = 0

    @property
    def precision(self) -> float | None:
        return None if not self.judged else 1 - self.false_alarms / self.judged

    @property
    def false_alarm_rate(self) -> float | None:
        return None if not self.judged else self.false_alarms / self.judged


@dataclass
class TeamVerdicts:
    by_type: dict[str, Verdicts] = field(default_factory=dict)
    by_month: dict[str, Verdicts] = field(default_factory=dict)  # "YYYY-MM" of the opening

    @property
    def judged(self) -> int:
        return sum(v.judged for v in self.by_type.values())


def summarise(judged: Iterable[tuple[str, datetime, str]]) -> TeamVerdicts:
    """(warning type, opened at, verdict) of each judged warning, summed."""
    out = TeamVerdicts()
    for warning_type, opened_at, verdict in judged:
        for bucket in (
            out.by_type.setdefault(warning_type, Verdicts()),
            out.by_month.setdefault(opened_at.strftime("%Y-%m"), Verdicts()),
        ):
            bucket.judged += 1
            bucket.false_alarms += verdict == "false_alarm"
    out.by_month = dict(sorted(out.by_month.items()))
    return out


def latest_verdicts(session: Session, warning_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Each judged warning's latest verdict (of these warnings, or of all)."""
    query = select(Feedback.warning_id, Feedback.verdict).where(Feedback.warning_id.is_not(None))
    if warning_ids is not None:
        query = query.where(Feedback.warning_id.in_(list(warning_ids)))
    return {wid: verdict for wid, verdict in session.execute(query.order_by(Feedback.id)) if wid}


def judged_warnings(session: Session) -> list[tuple[str, str, str, datetime, str]]:
    """(type, customer id, owner, opened at, latest verdict) of every warning with
    a verdict."""
    latest = latest_verdicts(session)
    if not latest:
        return []
    episodes = select(
        Episode.warning_id,
        Episode.warning_type,
        Episode.customer_id,
        Episode.owner,
        Episode.opened_at,
    ).where(Episode.warning_id.in_(list(latest)))
    return [
        (e.warning_type, e.customer_id, e.owner, e.opened_at, latest[e.warning_id])
        for e in session.execute(episodes)
    ]


def ledger_verdicts(url: str) -> TeamVerdicts | None:
    """The team's verdicts in the ledger at ``url``; None when there is no ledger
    there (a SQLite file not made yet is not made by asking)."""
    judged = _judged_in(url)
    if judged is None:
        return None
    return summarise((t, opened, verdict) for t, _, _, opened, verdict in judged)


def false_alarms(url: str, warning_type: str = "churn_risk") -> list[tuple[str, datetime]]:
    """(customer id, opened at) of each warning of ``warning_type`` in the ledger at
    ``url`` whose latest verdict is a false alarm (none without a ledger)."""
    return [
        (customer_id, opened)
        for t, customer_id, _, opened, verdict in _judged_in(url) or []
        if t == warning_type and verdict == "false_alarm"
    ]


def _judged_in(url: str) -> list[tuple[str, str, str, datetime, str]] | None:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None  # (asking makes no ledger)
    with open_ledger(url)() as session:
        return judged_warnings(session)


def format_verdicts(verdicts: TeamVerdicts | None, types: Iterable[str], where: str) -> str:
    """Lines for the CLI: each type's judged warnings, false alarms and precision."""
    if verdicts is None or not verdicts.judged:
        return f"the team's verdicts: none yet in the ledger ({where})"
    lines = [f"the team's verdicts ({where}): judged, false alarms, precision"]
    for warning_type in types:
        v = verdicts.by_type.get(warning_type)
        if v is None or not v.judged:
            lines.append(f"  {warning_type:<20} none judged")
            continue
        lines.append(f"  {warning_type:<20} {v.judged:>5} {v.false_alarms:>5}  {v.precision:.0%}")
    return "\n".join(lines)
