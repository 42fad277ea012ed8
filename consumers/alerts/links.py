"""One-click actions from a notification: signed links to acknowledge the
warning, snooze the customer's warnings of its type for 14 days, record that
the owner contacted them, or call it a false alarm.

Each link is signed (HMAC-SHA256, itsdangerous' URL-safe timed serializer, with
``web.link_secret``, which the dispatcher that writes the links and the web
process that follows them share), bound to the recipient the notification
went to and to one warning, expires after ``web.link_days`` and is used at
most once (the ledger's ``used_links``). Following it opens a confirmation
page; only its POST acts, so a mail scanner that opens every link changes
nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

#: What a link can do, in the order a message lists them.
LINK_ACTIONS = ("acknowledged", "snoozed", "contacted", "false_alarm")
#: How long the snooze a link sets lasts.
SNOOZE_DAYS = 14
_SALT = "churnwatch.action-link.v1"


class LinkRefused(ValueError):
    """A link that cannot act: ``reason`` is a text key the page shows."""

    def __init__(self, reason: str, at: datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at


@dataclass(frozen=True)
class LinkClaim:
    """What a valid link says: who may do what to which warning."""

    link_id: str  # unique per link: what makes it single-use
    warning_id: str
    recipient: str
    action: str
    expires_at: datetime


class ActionLinks:
    """Makes and reads the links; ``enabled`` only with a secret and a base URL."""

    def __init__(self, secret: str, base_url: str, days: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_age = timedelta(days=days)
        self.serializer = URLSafeTimedSerializer(
            secret or "-", salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.enabled = bool(secret and base_url)

    def links(self, warning_id: str, recipient: str) -> dict[str, str]:
        """A link per :data:`LINK_ACTIONS` (none when not enabled)."""
        if not self.enabled:
            return {}
        return {action: self.make(warning_id, recipient, action) for action in LINK_ACTIONS}

    def make(self, warning_id: str, recipient: str, action: str) -> str:
        if action not in LINK_ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        token = self.serializer.dumps(
            {"w": warning_id, "r": recipient, "a": action, "n": secrets.token_urlsafe(12)}
        )
        return f"{self.base_url}/act/{token}"

    def read(self, token: str) -> LinkClaim:
        """The link's claim; :class:`LinkRefused` if it was tampered with or expired."""
        try:
            claim, signed = self.serializer.loads(
                token, max_age=int(self.max_age.total_seconds()), return_timestamp=True
            )
        except SignatureExpired as exc:
            signed_at = exc.date_signed.astimezone(UTC) if exc.date_signed else None
            expired = signed_at + self.max_age if signed_at else None
            raise LinkRefused("link_expired", expired) from None
        except BadSignature:
            raise LinkRefused("link_bad") from None
        if not isinstance(claim, dict) or claim.get("a") not in LINK_ACTIONS:
            raise LinkRefused("link_bad")
        return LinkClaim(
            link_id=str(claim["n"]),
            warning_id=str(claim["w"]),
            recipient=str(claim["r"]),
            action=str(claim["a"]),
            expires_at=signed.astimezone(UTC) + self.max_age,
        )
