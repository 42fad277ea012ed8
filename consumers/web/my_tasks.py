"""The inbox's tasks page: the open tasks of the customers one may see (a rep's own,
a manager's team's), soonest due first, each closed from here as done (with what
came of it: the same rows as the customer page's outcome) or dropped."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from churnwatch.consumers.alerts.ledger import NOTE_LIMIT, OUTCOMES, Episode, Task, User
from churnwatch.consumers.web import acting
from churnwatch.consumers.web.access import Refused, page, posted_form, utc_now
from churnwatch.consumers.web.queries import owners_in_view

#: The closed tasks the page shows under the open ones.
RECENTLY_CLOSED = 20


@dataclass(frozen=True)
class Listed:
    task: Task
    episode: Episode
    overdue: bool


def listed(session: Session, user: User, state: str, limit: int | None = None) -> list[Listed]:
    """The tasks in ``state`` that ``user`` may see (open: soonest due first; closed:
    newest first)."""
    query = select(Task, Episode).join(Episode, Episode.warning_id == Task.warning_id)
    if state == "open":
        query = query.where(Task.state == "open").order_by(Task.due_at, Task.id)
    else:  # the ones replaced by an escalation are not news to anyone
        query = query.where(Task.state != "open", Task.outcome != "escalated")
        query = query.order_by(Task.closed_at.desc(), Task.id.desc())
    owners = owners_in_view(session, user)
    if owners is not None:
        query = query.where(Task.owner.in_(owners))
    if limit is not None:
        query = query.limit(limit)
    now = utc_now()
    return [Listed(t, e, t.state == "open" and t.due_at < now) for t, e in session.execute(query)]


def tasks_page(request: Request, session: Session, user: User) -> Response:
    return page(
        request,
        user,
        "tasks.html",
        {
            "open": listed(session, user, "open"),
            "closed": listed(session, user, "closed", RECENTLY_CLOSED),
            "outcomes": OUTCOMES,
            "flash": request.query_params.get("saved") == "1",
        },
    )


def close_task(request: Request, session: Session, user: User) -> Response:
    """POST ``/tasks/<id>``: ``do=done`` with an ``outcome``, or ``do=drop``."""
    try:
        task = session.get(Task, int(request.path_params["task_id"]))
    except ValueError:
        task = None
    owners = owners_in_view(session, user)
    if task is None:
        raise Refused(404, "not_found")
    if owners is not None and task.owner not in owners:
        raise Refused(403, "forbidden")
    if task.state != "open":
        raise Refused(409, "bad_request", reason="this task is closed already")
    form = posted_form(request)
    note = str(form.get("note", "")).strip()
    if len(note) > NOTE_LIMIT:
        raise Refused(400, "bad_request", reason=f"'note' is longer than {NOTE_LIMIT} characters")
    now = utc_now()
    if form.get("do") == "done":
        verdict = str(form.get("outcome", ""))
        if verdict not in OUTCOMES:
            raise Refused(400, "bad_request", reason="unknown outcome")
        episode = session.get(Episode, task.warning_id)
        if episode is None:  # (a foreign key: never; said rather than crash)
            raise Refused(404, "not_found")
        acting.record_outcome(session, episode, verdict, note, user.username, now)
    elif form.get("do") == "drop":
        acting.drop_task(session, task, note, user.username, now)
    else:
        raise Refused(400, "bad_request", reason="do must be done or drop")
    return RedirectResponse("/tasks?saved=1", status_code=303)
