"""``churnwatch web``: the sales team's inbox (Starlette, Jinja2 templates, uvicorn).

Every page needs a signed-in user (a signed, HTTP-only session cookie, or a
user header from a trusted single-sign-on proxy); every form carries the
session's CSRF token. Actions write the same ledger rows as ``churnwatch
alerts snooze|unsnooze|feedback``, so the dispatcher honours them at once.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import quote, urlencode

import uvicorn
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from churnwatch.consumers.alerts.dispatcher import action_links
from churnwatch.consumers.alerts.ledger import (
    NOTE_LIMIT,
    OUTCOMES,
    Action,
    Episode,
    LedgerError,
    User,
    lift_snoozes,
    open_ledger,
)
from churnwatch.consumers.web import acting, charts, my_tasks, one_click, queries, team
from churnwatch.consumers.web.access import (
    HERE,
    Refused,
    language_of,
    language_switch,
    login,
    logout,
    page,
    posted_form,
    signed_in,
    unsigned,
    utc_now,
)
from churnwatch.consumers.web.live import LiveStates
from churnwatch.consumers.web.texts import translator
from churnwatch.consumers.web.users import list_users
from churnwatch.core.broker import free_port
from churnwatch.core.settings import Settings
from churnwatch.pipeline.events import WARNING_TYPES
from churnwatch.pipeline.state import SEVERITIES

log = logging.getLogger(__name__)
#: The longest snooze a page accepts.
MAX_SNOOZE_DAYS = 366


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


def _inbox(request: Request, session: Session, user: User) -> Response:
    seen_text = request.session.get("seen_before", "")
    seen = datetime.fromisoformat(seen_text) if seen_text else None
    filters = _filters(request)
    order = request.query_params.get("order", "loss")
    order = order if order in queries.ORDERS else "loss"
    view = queries.inbox(session, user, request.app.state.live, filters, seen, order)
    size = request.app.state.settings.web.page_size
    pages = max(1, math.ceil(len(view.accounts) / size))
    try:
        number = min(max(1, int(request.query_params.get("page", "1"))), pages)
    except ValueError:
        number = 1
    user.inbox_seen_at = utc_now()
    query = {k: v for k, v in request.query_params.items() if k != "page"}
    return page(
        request,
        user,
        "inbox.html",
        {
            "view": view,
            "accounts": view.accounts[(number - 1) * size : number * size],
            "filters": filters,
            "order": order,
            "page": number,
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


def _customer(request: Request, session: Session, user: User) -> Response:
    customer_id = request.path_params["customer_id"]
    _allowed(session, user, customer_id)
    shown = queries.customer_page(session, customer_id, utc_now())
    live: LiveStates | None = request.app.state.live
    current = live.customer(customer_id) if live else None
    t = translator(language_of(request, user))
    weekly = aging = ""
    if current is not None:
        f = current.features
        weekly = charts.weekly_chart(
            current.weeks,
            current.orders,
            current.revenue,
            f.amount_baseline_per_week,
            [(e.opened_at, t(f"wt_{e.warning_type}")) for e in shown.episodes],
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
    # the newest churn-risk warning: its summary holds the model's reasons then (the
    # probability shown is the worker's live one, with the time it was scored)
    churn = next((e for e in shown.episodes if e.warning_type == "churn_risk"), None)
    colleagues = [u for u in list_users(session) if u.owner and u.owner != shown.owner]
    return page(
        request,
        user,
        "customer.html",
        {
            "page": shown,
            "live": current,
            # charts.py escapes every text it draws
            "weekly_chart": Markup(weekly),  # noqa: S704
            "aging_chart": Markup(aging),  # noqa: S704
            "churn": churn,
            "outcomes": OUTCOMES,
            "colleagues": colleagues,
            "today": utc_now().date().isoformat(),
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


def _act(request: Request, session: Session, user: User) -> Response:
    customer_id = request.path_params["customer_id"]
    what = request.path_params["action"]
    form = posted_form(request)
    _allowed(session, user, customer_id)
    now, by = utc_now(), user.username
    if what == "acknowledged":
        episode = _episode_of(session, customer_id, str(form.get("warning_id", "")))
        acting.acknowledge(session, episode, by, now)
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
            acting.snooze(session, customer_id, warning_type, until, reason, by, now)
        except LedgerError as exc:
            raise Refused(400, "bad_request", reason=str(exc)) from None
    elif what == "unsnoozed":
        lifted = str(lift_snoozes(session, customer_id, now))
        session.add(Action(customer_id=customer_id, kind=what, detail=lifted, by=by, at=now))
    elif what == "outcome":
        verdict = str(form.get("outcome", ""))
        if verdict not in OUTCOMES:
            raise Refused(400, "bad_request", reason="unknown outcome")
        episode = _episode_of(session, customer_id, str(form.get("warning_id", "")))
        acting.record_outcome(session, episode, verdict, _note(form, "note"), by, now)
    elif what == "handed_over":
        colleague = session.get(User, str(form.get("to", "")))
        if colleague is None or not colleague.owner:
            raise Refused(400, "bad_request", reason="hand over to a user who owns customers")
        acting.hand_over_customer(
            session, customer_id, colleague.owner, _note(form, "note"), by, now
        )
    else:
        raise Refused(404, "not_found")
    return RedirectResponse(f"/customers/{quote(customer_id)}?saved=1", status_code=303)


def _root(request: Request, session: Session, user: User) -> Response:
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
            Route("/login", unsigned(login), methods=["GET", "POST"]),
            Route("/logout", unsigned(logout), methods=["POST"]),
            Route("/language", signed_in(language_switch), methods=["POST"]),
            Route("/inbox", signed_in(_inbox)),
            Route("/customers/{customer_id}", signed_in(_customer)),
            Route("/customers/{customer_id}/{action}", signed_in(_act), methods=["POST"]),
            Route("/act/{token}", unsigned(one_click.follow), methods=["GET", "POST"]),
            Route("/tasks", signed_in(my_tasks.tasks_page)),
            Route("/tasks/{task_id}", signed_in(my_tasks.close_task), methods=["POST"]),
            Route("/team", signed_in(team.team)),
            Route("/team.csv", signed_in(team.team_csv)),
            Route("/users", signed_in(team.users), methods=["GET", "POST"]),
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
    app.state.links = action_links(settings)  # (the one-click links' signer, made once)
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
