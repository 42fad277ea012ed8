"""Tasks: what the account owner is to do about a warning, by when.

Each opened or escalated episode makes a task (the ledger's ``tasks``): the
customer's owner, the recommended action as its text, due after
``alerts.task_due_days`` of its severity. An escalation drops the task it
replaces (outcome ``escalated``), so a warning has at most one open task. A
task is ``done`` when someone records what came of its warning (the web inbox,
a one-click link, ``churnwatch alerts feedback``), with that outcome, or when
its warning resolves (outcome ``resolved``); ``dropped`` when someone drops it.

Past its due time the dispatcher reminds the owner (``task_overdue``) and,
``alerts.task_escalate_days`` later if it is still open, tells the owner's
manager (``task_escalated``; ``managers`` in the routing file). Both are
notifications like the others, through the same delivery stages: a snoozed
customer's task waits for the snooze's end, and a task closed meanwhile is
never reminded of.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import Episode, Task
from churnwatch.core.settings import AlertSettings

#: Who closes a task when its warning resolves.
BY_PIPELINE = "churnwatch"


def task_key(episode: Episode) -> str:
    return f"{episode.warning_id}|{episode.severity}"


def open_task(
    session: Session, episode: Episode, owner: str, settings: AlertSettings, now: datetime
) -> Task | None:
    """The task of ``episode`` at its current severity, made unless it exists (a
    redelivered record); the warning's earlier open task is dropped for it."""
    key = task_key(episode)
    if session.scalar(select(Task.id).where(Task.key == key)) is not None:
        return None
    close_tasks(session, [episode.warning_id], "dropped", "escalated", BY_PIPELINE, now)
    due = now + timedelta(days=settings.task_due_days[episode.severity])
    task = Task(
        key=key,
        warning_id=episode.warning_id,
        customer_id=episode.customer_id,
        owner=owner,
        severity=episode.severity,
        text=episode.action,
        state="open",
        outcome="",
        opened_at=now,
        due_at=due,
        closed_by="",
        check_at=due,
        feed_due=True,
    )
    session.add(task)
    return task


def close_tasks(
    session: Session,
    warning_ids: Iterable[str],
    state: str,
    outcome: str,
    by: str,
    now: datetime,
) -> list[Task]:
    """Close the open tasks of these warnings (``done`` or ``dropped``); returns them."""
    ids = list(warning_ids)
    if not ids:
        return []
    tasks = list(
        session.scalars(select(Task).where(Task.warning_id.in_(ids), Task.state == "open"))
    )
    for task in tasks:
        close(task, state, outcome, by, now)
    return tasks


def close(task: Task, state: str, outcome: str, by: str, now: datetime) -> None:
    task.state, task.outcome = state, outcome
    task.closed_at, task.closed_by, task.check_at = now, by[:100], None
    task.feed_due = True  # the dispatcher tells the account feed


def hand_over(session: Session, customer_id: str, owner: str) -> int:
    """The customer's open tasks go to its new owner; returns how many."""
    tasks = list(
        session.scalars(select(Task).where(Task.customer_id == customer_id, Task.state == "open"))
    )
    for task in tasks:
        task.owner = owner
    return len(tasks)


def tasks_of(session: Session, owners: Iterable[str] | None, state: str = "open") -> list[Task]:
    """Tasks in ``state`` of these owners (None: everyone's), soonest due first."""
    query = select(Task).where(Task.state == state).order_by(Task.due_at, Task.id)
    if owners is not None:
        query = query.where(Task.owner.in_(list(owners)))
    return list(session.scalars(query))


@dataclass(frozen=True)
class TaskCounts:
    open: int = 0
    overdue: int = 0
    done: int = 0
    dropped: int = 0


def task_counts(session: Session, now: datetime) -> dict[str, TaskCounts]:
    """Each owner's tasks: open, open past due, done and dropped (not those an
    escalation replaced)."""
    rows = session.execute(
        select(
            Task.owner,
            Task.state,
            func.count(Task.id),
            func.sum(case((Task.due_at < now, 1), else_=0)),
        )
        .where(Task.outcome != "escalated")
        .group_by(Task.owner, Task.state)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for owner, state, count, late in rows:
        mine = counts.setdefault(owner, {})
        mine[state] = int(count)
        if state == "open":
            mine["overdue"] = int(late or 0)
    return {
        owner: TaskCounts(
            open=c.get("open", 0),
            overdue=c.get("overdue", 0),
            done=c.get("done", 0),
            dropped=c.get("dropped", 0),
        )
        for owner, c in sorted(counts.items())
    }
