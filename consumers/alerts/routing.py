"""Who hears about which warning, through which channels (``configs/routing.yaml``).

By default a warning goes to the customer's owner; rules add recipients by
warning type, severity, segment and region; a customer without an owner goes
to the ``fallback`` recipient. Owners not listed under ``recipients`` get
email at their address with ``owner_defaults``' language, time zone and hours.
Channel secrets are written as ``${VARIABLE}`` and read from the environment
when a message is sent, so they are never in the file, the ledger or a log.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnwatch.core.settings import SmtpSettings
from churnwatch.pipeline.events import Severity, WarningType

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: What an address in a routing file or a customer's ``owner`` may look like.
PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*")


class RoutingError(Exception):
    """The routing file is wrong: the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channel(_Model):
    """One way to reach a recipient: exactly one of ``email``, ``webhook``, ``url``."""

    email: str | None = None
    webhook: str | None = Field(None, description="http(s) URL that receives a JSON POST")
    url: str | None = Field(None, description="any Apprise URL (slack://, msteams://, ...)")

    @field_validator("email")
    @classmethod
    def _plain_address(cls, value: str | None) -> str | None:
        if value is not None and not PLAIN_ADDRESS.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is not a plain e-mail address (letters, digits and . _ + - "
                "before the @; nothing that could add recipients or change the mail server)"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Channel:
        if sum(v is not None for v in (self.email, self.webhook, self.url)) != 1:
            raise ValueError("a channel has exactly one of email, webhook, url")
        return self

    @property
    def name(self) -> str:
        """A label safe to store and log (never the secret parts)."""
        if self.email is not None:
            return f"email:{self.email}"
        if self.webhook is not None:
            return "webhook:" + self.webhook.split("://", 1)[-1].split("/", 1)[0]
        return str(self.url).split("://", 1)[0]

    def apprise_url(self, smtp: SmtpSettings) -> str:
        """The Apprise URL to send through, with secrets filled in from the environment."""
        if self.email is not None:
            # Every value quoted, so none can add a parameter (``&bcc=``, ``&smtp=``);
            # Apprise unquotes the credentials and the sender twice (once parsing the
            # URL, once more building the notifier), so they are quoted twice.
            auth = ""
            if smtp.user:
                password = smtp.password.get_secret_value()
                auth = f"user={_quote(smtp.user, 2)}&pass={_quote(password, 2)}&"
            return (
                f"mailto://{_quote(smtp.host, 1)}:{smtp.port}?{auth}"
                f"from={_quote(smtp.sender, 2)}&to={_quote(self.email, 1)}&mode={smtp.security}"
            )
        if self.webhook is not None:
            scheme, rest = self.webhook.split("://", 1)
            return ("jsons://" if scheme == "https" else "json://") + _fill(rest)
        return _fill(str(self.url))


def _quote(value: str, times: int) -> str:
    for _ in range(times):
        value = quote(value, safe="")
    return value


def _fill(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise RoutingError(f"channel needs the environment variable {name}, which is not set")
        return os.environ[name]

    return _ENV.sub(value, text)


class Window(_Model):
    """When a recipient may be disturbed (local time); outside it, messages wait."""

    timezone: str = "UTC"
    hours: str | None = Field(None, description="HH:MM-HH:MM, e.g. 08:00-18:00; none: any time")
    weekdays_only: bool = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", value):
            raise ValueError("hours must look like 08:00-18:00")
        return value

    def _span(self) -> tuple[time, time] | None:
        if self.hours is None:
            return None
        start, end = self.hours.split("-")
        return time.fromisoformat(start), time.fromisoformat(end)

    def next_open(self, now: datetime) -> datetime:
        """``now`` if the window is open, else when it next opens (aware UTC-comparable)."""
        local = now.astimezone(ZoneInfo(self.timezone))
        span = self._span()
        for day in range(8):
            candidate_day = (local + timedelta(days=day)).date()
            if self.weekdays_only and candidate_day.weekday() >= 5:
                continue
            if span is None:
                start = datetime.combine(candidate_day, time(0), local.tzinfo)
                end = start + timedelta(days=1)
            else:
                start = datetime.combine(candidate_day, span[0], local.tzinfo)
                end = datetime.combine(candidate_day, span[1], local.tzinfo)
            if end <= local:
                continue
            return now if start <= local else start
        return now  # a window that never opens is a config mistake; do not hold forever


class Recipient(_Model):
    channels: list[Channel] = Field(min_length=1)
    language: Literal["en", "zh-CN"] = "en"
    window: Window = Window()


class OwnerDefaults(_Model):
    """For owners not listed under ``recipients``: email to the owner's address."""

    language: Literal["en", "zh-CN"] = "en"
    window: Window = Window()


class Match(_Model):
    warning_type: list[WarningType] | None = None
    severity: list[Severity] | None = None
    segment: list[str] | None = None
    region: list[str] | None = None


class Rule(_Model):
    """When ``when`` matches (every given key), also notify ``notify``."""

    when: Match = Match()
    notify: list[str] = Field(min_length=1)


class Inhibition(_Model):
    """While ``while_open`` is open for a customer, hold back ``hold`` for that customer."""

    while_open: WarningType
    hold: list[WarningType] = Field(min_length=1)


class FeedWebhook(_Model):
    """Where the account feed is POSTed (a CRM integration): each change as JSON
    (``pipeline.events.AccountChange``), with these headers (``${VARIABLE}`` read
    from the environment when sending, e.g. ``Authorization: Bearer ${CRM_TOKEN}``)."""

    webhook: str = Field(pattern=r"^https?://[^\s]+$")
    headers: dict[str, str] = {}

    @property
    def name(self) -> str:
        """A label safe to store and log (the host, never the path or a secret)."""
        return "feed:" + self.webhook.split("://", 1)[-1].split("/", 1)[0]

    def url(self) -> str:
        return _fill(self.webhook)

    def filled_headers(self) -> dict[str, str]:
        return {key: _fill(value) for key, value in self.headers.items()}


class Routing(_Model):
    recipients: dict[str, Recipient] = {}
    owner_defaults: OwnerDefaults = OwnerDefaults()
    fallback: str
    rules: list[Rule] = []
    inhibit: list[Inhibition] = []
    #: Who hears of a task still open past its due time after its owner was reminded:
    #: the recipient by the owner, "*" for every owner not listed (none: nobody).
    managers: dict[str, str] = {}
    #: The account feed's webhooks (docs/alerts.md, "The account feed").
    feed: list[FeedWebhook] = []

    @model_validator(mode="after")
    def _names_exist(self) -> Routing:
        if self.fallback not in self.recipients:
            raise ValueError(f"fallback {self.fallback!r} is not under recipients")
        for owner, name in self.managers.items():
            if name not in self.recipients:
                raise ValueError(f"managers.{owner}: {name!r} is not under recipients")
        for i, rule in enumerate(self.rules):
            for name in rule.notify:
                if name != "owner" and name not in self.recipients:
                    raise ValueError(f"rules.{i}.notify: {name!r} is not under recipients")
        return self

    def route(
        self,
        owner: str,
        warning_type: WarningType,
        severity: Severity,
        segment: str,
        region: str,
    ) -> list[str]:
        """Recipient names for a warning, owner first, each once."""
        names = [owner or self.fallback]
        for rule in self.rules:
            w = rule.when
            if (
                (w.warning_type is None or warning_type in w.warning_type)
                and (w.severity is None or severity in w.severity)
                and (w.segment is None or segment in w.segment)
                and (w.region is None or region in w.region)
            ):
                names += [owner or self.fallback if n == "owner" else n for n in rule.notify]
        return list(dict.fromkeys(names))

    def recipient(self, name: str) -> Recipient:
        """The recipient called ``name``; an unlisted owner gets email at that address."""
        known = self.recipients.get(name)
        if known is not None:
            return known
        if not PLAIN_ADDRESS.fullmatch(name):
            # An owner that is not a plain address (a handle, or text crafted to add
            # recipients) is not mailed: the fallback recipient hears instead.
            return self.recipients[self.fallback]
        d = self.owner_defaults
        return Recipient(channels=[Channel(email=name)], language=d.language, window=d.window)

    def manager_of(self, owner: str) -> str | None:
        """The recipient told of ``owner``'s overdue tasks (None: nobody)."""
        return self.managers.get(owner) or self.managers.get("*")

    def held_by(self, warning_type: WarningType) -> list[WarningType]:
        """The warning types whose open episode holds back ``warning_type``."""
        return [i.while_open for i in self.inhibit if warning_type in i.hold]


def load_routing(path: str | Path) -> Routing:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RoutingError(f"routing file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"{path} is not valid YAML: {exc}") from None
    try:
        return Routing.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise RoutingError(f"{path}: {problems}") from None
