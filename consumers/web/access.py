"""Who is asking, and the frame of every page of the web inbox.

Every page needs a signed-in user: a signed, HTTP-only session cookie, or a
user header from a trusted single-sign-on proxy (:func:`signed_in`); every
form carries the session's CSRF token (:func:`posted_form`). A request that
cannot be done raises :class:`Refused`, which shows its message with its status
and writes nothing.

Handlers are plain functions: only reading the request body is awaited on
the event loop; the ledger queries, the live-state lock, the argon2 password
hash and the page rendering run in Starlette's thread pool, so one slow page
never holds up another (as the FastAPI template's sync routes do).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from churnwatch.consumers.alerts.ledger import User
from churnwatch.consumers.web.texts import LANGUAGE_NAMES, LANGUAGES, translator
from churnwatch.consumers.web.users import authenticate
from churnwatch.pipeline.events import WARNING_TYPES
from churnwatch.pipeline.state import SEVERITIES
from churnwatch.pipeline.texts import Language

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


class Refused(Exception):
    """A request that cannot be done: its status and the message to show."""

    def __init__(self, status: int, key: str, **values: object) -> None:
        super().__init__(key)
        self.status, self.key, self.values = status, key, values


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- who is asking ---------------------------------------------------------------------


def current_user(request: Request, session: Session) -> User | None:
    web = request.app.state.settings.web
    client = request.client.host if request.client else ""
    if web.user_header and client in web.trusted_proxies:
        header = request.headers.get(web.user_header, "")
        if header:
            return session.get(User, header)
    name = request.session.get("user")
    return session.get(User, name) if name else None


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def token_ok(request: Request, form: FormData) -> bool:
    """Whether the form carries this session's CSRF token."""
    sent = str(form.get("csrf", ""))
    return bool(sent) and secrets.compare_digest(sent, request.session.get("csrf", ""))


def local_target(target: str) -> str:
    """``target`` if it is one of our own pages, else the inbox (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/inbox"


def posted_form(request: Request) -> FormData:
    """The posted form (read before the handler ran), once its CSRF token matches the
    session's."""
    form: FormData = request.state.form
    if not token_ok(request, form):
        raise Refused(403, "bad_request", reason="the form's security token is missing or stale")
    return form


def language_of(request: Request, user: User | None) -> Language:
    chosen = user.language if user is not None else request.session.get("lang", "en")
    return next((lang for lang in LANGUAGES if lang == chosen), "en")


Handler = Callable[[Request, Session, User], Response]


async def _read_form(request: Request) -> None:
    """The one awaited step of a request: its form, if it posted one."""
    request.state.form = await request.form() if request.method == "POST" else FormData()


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` in the thread pool with a ledger session and the signed-in
    user, or send to login."""

    def run(request: Request) -> Response:
        sessions: sessionmaker[Session] = request.app.state.sessions
        with sessions() as session:
            user = current_user(request, session)
            if user is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            try:
                response = handler(request, session, user)
                session.commit()
                return response
            except Refused as refused:
                session.rollback()  # nothing of a refused request is written
                t = translator(language_of(request, user))
                return page(
                    request,
                    user,
                    "message.html",
                    {"message": t(refused.key, **refused.values)},
                    status=refused.status,
                )

    async def endpoint(request: Request) -> Response:
        await _read_form(request)
        return await run_in_threadpool(run, request)

    return endpoint


def unsigned(handler: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
    """A page anyone may open (login, logout), run in the thread pool as well."""

    async def endpoint(request: Request) -> Response:
        await _read_form(request)
        return await run_in_threadpool(handler, request)

    return endpoint


def page(
    request: Request,
    user: User | None,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    language = language_of(request, user)
    return templates.TemplateResponse(
        request,
        template,
        {
            "t": translator(language),
            "language": language,
            "languages": LANGUAGE_NAMES,
            "user": user,
            "csrf": csrf_token(request),
            "warning_types": WARNING_TYPES,
            "severities": SEVERITIES,
            **context,
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


# --- login -----------------------------------------------------------------------------


def login(request: Request) -> Response:
    target = local_target(request.query_params.get("next", "/inbox"))
    failed = False
    if request.method == "POST":
        form: FormData = request.state.form
        if token_ok(request, form):
            with request.app.state.sessions.begin() as session:
                user = authenticate(
                    session, str(form.get("username", ""))[:100], str(form.get("password", ""))
                )
                if user is not None:
                    seen = user.inbox_seen_at
                    request.session.clear()
                    request.session["user"] = user.username
                    request.session["seen_before"] = seen.isoformat() if seen else ""
                    csrf_token(request)
                    return RedirectResponse(target, status_code=303)
        failed = True
        log.info("failed login for %r", str(form.get("username", ""))[:100])
    return page(
        request,
        None,
        "login.html",
        {"failed": failed, "next": target},
        status=401 if failed else 200,
    )


def logout(request: Request) -> Response:
    if token_ok(request, request.state.form):
        request.session.clear()  # (a forged logout form changes nothing)
    return RedirectResponse("/login", status_code=303)


def language_switch(request: Request, session: Session, user: User) -> Response:
    form = posted_form(request)
    lang = str(form.get("language", ""))
    if lang in LANGUAGES:
        user.language = lang
    return RedirectResponse(local_target(str(form.get("back", "/inbox"))), status_code=303)
