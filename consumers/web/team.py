"""The team's pages of the web inbox: every open warning of the team (and as CSV)
for managers, the users for admins."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from churnwatch.consumers.alerts.ledger import ROLES, User
from churnwatch.consumers.web import queries
from churnwatch.consumers.web.access import Refused, page, posted_form
from churnwatch.consumers.web.texts import LANGUAGES
from churnwatch.consumers.web.users import UserError, add_user, list_users, remove_user

log = logging.getLogger(__name__)


def _manager(user: User) -> None:
    if user.role not in ("manager", "admin"):
        raise Refused(403, "forbidden")


def team(request: Request, session: Session, user: User) -> Response:
    _manager(user)
    view = queries.team(session, user, request.app.state.live)
    backtest = _backtest_precision(request.app.state.settings.web.backtest_summary)
    return page(request, user, "team.html", {"view": view, "backtest": backtest})


def _backtest_precision(path: str) -> dict[str, float]:
    """Each warning type's precision in a backtest's summary.json (none if unreadable)."""
    if not path:
        return {}
    try:
        rules = json.loads(Path(path).read_text(encoding="utf-8"))["rules"]
        return {
            name: float(figures["precision"])
            for name, figures in rules.items()
            if isinstance(figures, dict) and figures.get("precision") is not None
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read web.backtest_summary %s: %s", path, exc)
        return {}


def team_csv(request: Request, session: Session, user: User) -> Response:
    _manager(user)
    view = queries.team(session, user, request.app.state.live)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "customer_id",
            "customer_name",
            "owner",
            "segment",
            "region",
            "warning_type",
            "severity",
            "opened_at",
            "expected_loss",
            "acknowledged",
            "summary",
        ]
    )
    for r in view.rows:
        e = r.episode
        writer.writerow(
            [
                e.customer_id,
                _cell(e.customer_name),
                _cell(r.owner),
                r.segment,
                r.region,
                e.warning_type,
                e.severity,
                e.opened_at.isoformat(),
                f"{r.loss:.2f}",
                "yes" if r.acknowledged else "no",
                _cell(e.summary),
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="churnwatch-warnings.csv"'},
    )


def _cell(text: str) -> str:
    """A spreadsheet must not run what a customer name says (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def users(request: Request, session: Session, user: User) -> Response:
    if user.role != "admin":
        raise Refused(403, "forbidden")
    if request.method == "POST":
        form = posted_form(request)
        try:
            if form.get("remove"):
                if form.get("remove") == user.username:
                    raise UserError("you cannot remove yourself")
                remove_user(session, str(form.get("remove")))
            else:
                add_user(
                    session,
                    str(form.get("username", "")),
                    str(form.get("password", "")),
                    str(form.get("role", "")),
                    str(form.get("owner", "")).strip()[:200],
                    str(form.get("team", "")).strip()[:100],
                    next((lang for lang in LANGUAGES if lang == form.get("language")), "en"),
                )
        except UserError as exc:
            raise Refused(400, "bad_request", reason=str(exc)) from None
        return RedirectResponse("/users", status_code=303)
    return page(request, user, "users.html", {"users": list_users(session), "roles": ROLES})
