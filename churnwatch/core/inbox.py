"""A local mail inbox (aiosmtpd): the demo's stand-in for the sales team's mail server.

It accepts every message on a loopback port and keeps it in memory, so the
demo (and the tests) can show what the salespeople would have received.
"""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class LocalInbox:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    #: Each message's envelope recipients (RCPT TO), which include any Bcc.
    recipients: list[list[str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def start(self) -> LocalInbox:
        from churnwatch.core.broker import free_port

        self.port = self.port or free_port(self.host)
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)

    def envelopes(self) -> list[list[str]]:
        """Who each message was delivered to, as the mail server saw it."""
        with self._lock:
            return [list(r) for r in self.recipients]

    @staticmethod
    def text(message: EmailMessage) -> str:
        """The plain-text part of a message."""
        part = message.get_body(preferencelist=("plain", "html"))
        return "" if part is None else str(part.get_content())
