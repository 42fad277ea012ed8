"""The page a one-click link from a notification opens (``/act/<token>``,
``consumers/alerts/links.py``): no login, the signed link is the authority.

Its GET only shows what the link would do and a button; the POST does it, once:
the link's id goes into ``used_links`` in the same transaction as the action's
rows (``acting``), so a second POST, a reload or a copy of the mail finds it
used. A link that was tampered with, has expired, or whose warning the ledger
does not know changes nothing and the page says why.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from churnwatch.consumers.alerts.ledger import Episode, LedgerError, UsedLink
from churnwatch.consumers.alerts.links import SNOOZE_DAYS, LinkClaim, LinkRefused
from churnwatch.consumers.web import acting
from churnwatch.consumers.web.access import language_of, page, posted_form, utc_now
from churnwatch.consumers.web.texts import translator

log = logging.getLogger(__name__)


def follow(request: Request) -> Response:
    token = request.path_params["token"]
    t = translator(language_of(request, None))
    sessions: sessionmaker[Session] = request.app.state.sessions

    def refused(key: str, status: int, **values: object) -> Response:
        return page(request, None, "message.html", {"message": t(key, **values)}, status=status)

    try:
        claim = request.app.state.links.read(token)
    except LinkRefused as exc:
        at = exc.at.strftime("%Y-%m-%d %H:%M UTC") if exc.at else "-"
        return refused(exc.reason, 410 if exc.reason == "link_expired" else 400, at=at)
    with sessions.begin() as session:
        episode = session.get(Episode, claim.warning_id)
        if episode is None:
            return refused("link_bad", 404)
        used = session.get(UsedLink, claim.link_id)
        if used is not None:
            return refused("link_used", 409, at=used.used_at.strftime("%Y-%m-%d %H:%M UTC"))
        context = {"claim": claim, "episode": episode, "token": token, "done": False}
        if request.method != "POST":
            return page(request, None, "act.html", context)
        posted_form(request)  # (the confirmation page's own form, from this browser)
        try:
            _do(session, claim, episode)
            session.flush()  # a link used at the same moment elsewhere fails here
        except IntegrityError:
            session.rollback()
            return refused("link_used", 409, at="-")
        except LedgerError as exc:
            session.rollback()
            return refused("bad_request", 400, reason=str(exc))
        log.info(
            "%s used a one-click link: %s %s", claim.recipient, claim.action, episode.warning_id
        )
        return page(request, None, "act.html", {**context, "done": True})


def _do(session: Session, claim: LinkClaim, episode: Episode) -> None:
    now = utc_now()
    by = f"{claim.recipient} (link)"[:100]
    session.add(
        UsedLink(
            link_id=claim.link_id,
            warning_id=episode.warning_id,
            recipient=claim.recipient,
            action=claim.action,
            used_at=now,
        )
    )
    if claim.action == "acknowledged":
        acting.acknowledge(session, episode, by, now)
    elif claim.action == "snoozed":
        until = now + timedelta(days=SNOOZE_DAYS)
        reason = f"snoozed {SNOOZE_DAYS} days from a notification"
        acting.snooze(session, episode.customer_id, episode.warning_type, until, reason, by, now)
    else:  # contacted, false_alarm: what came of it
        acting.record_outcome(session, episode, claim.action, "from a notification", by, now)
