"""``churnwatch web``: the sales team's inbox (Starlette, Jinja2 templates, uvicorn).

Every page needs a signed-in user (a signed, HTTP-only session cookie, or a
user header from a trusted single-sign-on proxy); every form carries the
session's CSRF token. Actions write the same ledger rows as ``churnwatch
alerts snooze|unsnooze|feedback``, so the dispatcher honours them at once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import secrets
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import uvicorn
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from churnwatch.core.broker import free_port
from churnwatch.core.settings import Settings
from consumers.alerts.ledger import (
    NOTE_LIMIT,
    OUTCOMES,
    ROLES,
    Action,
    Episode,
    LedgerError,
    Notification,
    User,
    add_feedback,
    add_snooze,
    lift_snoozes,
    open_ledger,
)
from consumers.web import charts, queries
from consumers.web.live import LiveStates
from consumers.web.texts import LANGUAGE_NAMES, LANGUAGES, translator
from consumers.web.users import UserError, add_user, authenticate, list_users, remove_user
from pipeline.events import WARNING_TYPES
from pipeline.state import SEVERITIES
from pipeline.texts import Language

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
#: The longest snooze a page accepts.
MAX_SNOOZE_DAYS = 366


class Refused(Exception):
    """A request that cannot be done: its status and the message to show."""

    def __init__(self, status: int, key: str, **values: object) -> None:
        super().__init__(key)
        self.status, self.key, self.values = status, key, values


def _now() -> datetime:
    return datetime.now(UTC)


# --- who is asking ---------------------------------------------------------------------


def _user(request: Request, session: Session) -> User | None:
    web = request.app.state.settings.web
    client = request.client.host if request.client else ""
    if web.user_header and client in web.trusted_proxies:
        header = request.headers.get(web.user_header, "")
        if header:
            return session.get(User, header)
    name = request.session.get("user")
    return session.get(User, name) if name else None


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def _token_ok(request: Request, form: FormData) -> bool:
    """Whether the form carries this session's CSRF token."""
    sent = str(form.get("csrf", ""))
    return bool(sent) and secrets.compare_digest(sent, request.session.get("csrf", ""))


def _local(target: str) -> str:
    """``target`` if it is one of our own pages, else the inbox (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/inbox"


async def _form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's."""
    form = await request.form()
    if not _token_ok(request, form):
        raise Refused(403, "bad_request", reason="the form's security token is missing or stale")
    return form


def _language(request: Request, user: User | None) -> Language:
    chosen = user.language if user is not None else request.session.get("lang", "en")
    return next((lang for lang in LANGUAGES if lang == chosen), "en")


Handler = Callable[[Request, Session, User], Awaitable[Response]]


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` with a ledger session and the signed-in user, or send to login."""

    async def endpoint(request: Request) -> Response:
        sessions: sessionmaker[Session] = request.app.state.sessions
        with sessions() as session:
            user = _user(request, session)
            if user is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            try:
                response = await handler(request, session, user)
                session.commit()
                return response
            except Refused as refused:
                session.rollback()  # nothing of a refused request is written
                t = translator(_language(request, user))
                return _page(
                    request,
                    user,
                    "message.html",
                    {"message": t(refused.key, **refused.values)},
                    status=refused.status,
                )

    return endpoint


def _page(
    request: Request,
    user: User | None,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    language = _language(request, user)
    return templates.TemplateResponse(
        request,
        template,
        {
            "t": translator(language),
            "language": language,
            "languages": LANGUAGE_NAMES,
            "user": user,
            "csrf": _csrf(request),
            "warning_types": WARNING_TYPES,
            "severities": SEVERITIES,
            **context,
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


# --- login -----------------------------------------------------------------------------


async def login(request: Request) -> Response:
    target = _local(request.query_params.get("next", "/inbox"))
    failed = False
    if request.method == "POST":
        form = await request.form()
        if _token_ok(request, form):
            with request.app.state.sessions.begin() as session:
                user = authenticate(
                    session, str(form.get("username", ""))[:100], str(form.get("password", ""))
                )
                if user is not None:
                    seen = user.inbox_seen_at
                    request.session.clear()
                    request.session["user"] = user.username
                    request.session["seen_before"] = seen.isoformat() if seen else ""
                    _csrf(request)
                    return RedirectResponse(target, status_code=303)
        failed = True
        log.info("failed login for %r", str(form.get("username", ""))[:100])
    return _page(
        request,
        None,
        "login.html",
        {"failed": failed, "next": target},
        status=401 if failed else 200,
    )


async def logout(request: Request) -> Response:
    if _token_ok(request, await request.form()):
        request.session.clear()  # (a forged logout form changes nothing)
    return RedirectResponse("/login", status_code=303)


async def _language_switch(request: Request, session: Session, user: User) -> Response:
    form = await _form(request)
    lang = str(form.get("language", ""))
    if lang in LANGUAGES:
        user.language = lang
    return RedirectResponse(_local(str(form.get("back", "/inbox"))), status_code=303)


# --- inbox -----------------------------------------------------------------------------


def _filters(request: Request) -> queries.Filters:
    q = request.query_params
    return queries.Filters(
        warning_type=q.get("type", "") if q.get("type", "") in WARNING_TYPES else "",
        severity=q.get("severity", "") if q.get("severity", "") in SEVERITIES else "",
        segment=q.get("segment", "")[:50],
        quadrant=q.get("quadrant", "")[:50],
        acknowledged=q.get("ack", "") if q.get("ack", "") in ("yes", "no") else "",
        search=q.get("q", "")[:100],
    )


async def _inbox(request: Request, session: Session, user: User) -> Response:
    seen_text = request.session.get("seen_before", "")
    seen = datetime.fromisoformat(seen_text) if seen_text else None
    filters = _filters(request)
    view = queries.inbox(session, user, request.app.state.live, filters, seen)
    size = request.app.state.settings.web.page_size
    pages = max(1, math.ceil(len(view.rows) / size))
    try:
        page = min(max(1, int(request.query_params.get("page", "1"))), pages)
    except ValueError:
        page = 1
    user.inbox_seen_at = _now()
    query = {k: v for k, v in request.query_params.items() if k != "page"}
    return _page(
        request,
        user,
        "inbox.html",
        {
            "view": view,
            "rows": view.rows[(page - 1) * size : page * size],
            "filters": filters,
            "page": page,
            "pages": pages,
            "query": urlencode(query),
        },
    )


# --- a customer ------------------------------------------------------------------------


def _allowed(session: Session, user: User, customer_id: str) -> None:
    seen = queries.may_see(session, user, customer_id)
    if seen is None:
        raise Refused(404, "not_found")
    if not seen:
        log.info("%s was refused customer %s", user.username, customer_id)
        raise Refused(403, "forbidden")


async def _customer(request: Request, session: Session, user: User) -> Response:
    customer_id = request.path_params["customer_id"]
    _allowed(session, user, customer_id)
    page = queries.customer_page(session, customer_id, _now())
    live: LiveStates | None = request.app.state.live
    current = live.customer(customer_id) if live else None
    t = translator(_language(request, user))
    weekly = aging = ""
    if current is not None:
        f = current.features
        weekly = charts.weekly_chart(
            current.weeks,
            current.orders,
            current.revenue,
            f.amount_baseline_per_week,
            [(e.opened_at, t(f"wt_{e.warning_type}")) for e in page.episodes],
            {
                "title": t("weekly_orders"),
                "revenue": t("revenue"),
                "orders": t("orders"),
                "baseline": t("baseline"),
                "opening": t("warning_opened_mark"),
            },
        )
        aging = charts.aging_chart(
            [
                (t("days_1_30"), f.overdue_1_30),
                (t("days_31_60"), f.overdue_31_60),
                (t("days_61_90"), f.overdue_61_90),
                (t("days_over_90"), f.overdue_over_90),
            ]
        )
    # the newest churn-risk warning (its summary holds the model's version and reasons),
    # else the newest warning the model scored
    scored = [e for e in page.episodes if e.churn_probability is not None]
    churn = next((e for e in scored if e.warning_type == "churn_risk"), None) or next(
        iter(scored), None
    )
    colleagues = [u for u in list_users(session) if u.owner and u.owner != page.owner]
    return _page(
        request,
        user,
        "customer.html",
        {
            "page": page,
            "live": current,
            # charts.py escapes every text it draws
            "weekly_chart": Markup(weekly),  # noqa: S704
            "aging_chart": Markup(aging),  # noqa: S704
            "churn": churn,
            "outcomes": OUTCOMES,
            "colleagues": colleagues,
            "today": _now().date().isoformat(),
            "flash": request.query_params.get("saved") == "1",
        },
    )


def _episode_of(session: Session, customer_id: str, warning_id: str) -> Episode:
    episode = session.get(Episode, warning_id) if warning_id else None
    if episode is None or episode.customer_id != customer_id:
        raise Refused(400, "bad_request", reason="that warning is not this customer's")
    return episode


def _note(form: FormData, name: str, required: bool = False) -> str:
    text = str(form.get(name, "")).strip()
    if required and not text:
        raise Refused(400, "bad_request", reason=f"'{name}' is required")
    if len(text) > NOTE_LIMIT:
        raise Refused(400, "bad_request", reason=f"'{name}' is longer than {NOTE_LIMIT} characters")
    return text


async def _act(request: Request, session: Session, user: User) -> Response:
    customer_id = request.path_params["customer_id"]
    what = request.path_params["action"]
    form = await _form(request)
    _allowed(session, user, customer_id)
    now = _now()
    record = Action(customer_id=customer_id, kind=what, by=user.username, at=now)
    if what == "acknowledged":
        episode = _episode_of(session, customer_id, str(form.get("warning_id", "")))
        record.warning_id = episode.warning_id
    elif what == "snoozed":
        try:
            day = date.fromisoformat(str(form.get("until", "")))
        except ValueError:
            raise Refused(400, "bad_request", reason="the date must be YYYY-MM-DD") from None
        until = datetime.combine(day, time(), UTC)
        if until > now + timedelta(days=MAX_SNOOZE_DAYS):
            raise Refused(400, "bad_request", reason=f"a snooze ends within {MAX_SNOOZE_DAYS} days")
        warning_type = str(form.get("warning_type", "")) or None
        if warning_type is not None and warning_type not in WARNING_TYPES:
            raise Refused(400, "bad_request", reason="unknown warning type")
        reason = _note(form, "reason", required=True)
        try:
            add_snooze(session, customer_id, warning_type, until, reason, now)
        except LedgerError as exc:
            raise Refused(400, "bad_request", reason=str(exc)) from None
        record.detail, record.note = f"{day.isoformat()} {warning_type or ''}".strip(), reason
    elif what == "unsnoozed":
        record.detail = str(lift_snoozes(session, customer_id, now))
    elif what == "outcome":
        verdict = str(form.get("outcome", ""))
        if verdict not in OUTCOMES:
            raise Refused(400, "bad_request", reason="unknown outcome")
        episode = _episode_of(session, customer_id, str(form.get("warning_id", "")))
        note = _note(form, "note")
        quoted = session.scalar(
            select(Notification.short_id)
            .where(Notification.warning_id == episode.warning_id)
            .order_by(Notification.id.desc())
            .limit(1)
        )
        add_feedback(session, quoted or "", episode.warning_id, verdict, note, now)
        record.warning_id, record.detail, record.note = episode.warning_id, verdict, note
    elif what == "handed_over":
        colleague = session.get(User, str(form.get("to", "")))
        if colleague is None or not colleague.owner:
            raise Refused(400, "bad_request", reason="hand over to a user who owns customers")
        record.detail, record.note = colleague.owner, _note(form, "note")
    else:
        raise Refused(404, "not_found")
    session.add(record)
    return RedirectResponse(f"/customers/{quote(customer_id)}?saved=1", status_code=303)


# --- the team --------------------------------------------------------------------------


def _manager(user: User) -> None:
    if user.role not in ("manager", "admin"):
        raise Refused(403, "forbidden")


async def _team(request: Request, session: Session, user: User) -> Response:
    _manager(user)
    view = queries.team(session, user, request.app.state.live)
    backtest = _backtest_precision(request.app.state.settings.web.backtest_summary)
    return _page(request, user, "team.html", {"view": view, "backtest": backtest})


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


async def _team_csv(request: Request, session: Session, user: User) -> Response:
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


async def _users(request: Request, session: Session, user: User) -> Response:
    if user.role != "admin":
        raise Refused(403, "forbidden")
    if request.method == "POST":
        form = await _form(request)
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
    return _page(request, user, "users.html", {"users": list_users(session), "roles": ROLES})


async def _root(request: Request, session: Session, user: User) -> Response:
    return RedirectResponse("/inbox", status_code=303)


def create_web_app(
    settings: Settings, sessions: sessionmaker[Session], live: LiveStates | None
) -> Starlette:
    secret = settings.web.session_secret.get_secret_value()
    if not secret:
        secret = secrets.token_urlsafe(32)
        log.warning(
            "web.session_secret is not set: sessions end when this process stops "
            "(set CHURNWATCH_WEB__SESSION_SECRET)"
        )
    app = Starlette(
        routes=[
            Route("/", signed_in(_root)),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/language", signed_in(_language_switch), methods=["POST"]),
            Route("/inbox", signed_in(_inbox)),
            Route("/customers/{customer_id}", signed_in(_customer)),
            Route("/customers/{customer_id}/{action}", signed_in(_act), methods=["POST"]),
            Route("/team", signed_in(_team)),
            Route("/team.csv", signed_in(_team_csv)),
            Route("/users", signed_in(_users), methods=["GET", "POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                session_cookie="churnwatch_session",
                max_age=int(settings.web.session_hours * 3600),
                same_site="lax",
                https_only=settings.web.secure_cookies,
            )
        ],
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.live = live
    return app


class WebServer:
    """The inbox served by uvicorn in a thread (the demo and the tests run it so)."""

    def __init__(
        self,
        settings: Settings,
        host: str | None = None,
        port: int | None = None,
        live: bool | LiveStates = True,
    ) -> None:
        """``live``: follow the workers' changelog (True), show the ledger's figures
        only (False), or serve these states as they are (a benchmark fills them)."""
        self.settings = settings
        self.follow = live is True
        self.live = LiveStates(settings) if live is True else (live or None)
        app = create_web_app(settings, open_ledger(settings.alerts.ledger_url), self.live)
        host = host or settings.web.host
        port = settings.web.port if port is None else port
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port or free_port(host),  # 0: any free port
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self) -> WebServer:
        if self.live is not None and self.follow:
            self.live.start()
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the web inbox could not start on {self.url}")
            threading.Event().wait(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.live is not None and self.follow:
            self.live.stop()

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        self.start()
        try:
            while self.thread is not None and self.thread.is_alive():
                self.thread.join(timeout=0.5)
        finally:
            self.stop()
