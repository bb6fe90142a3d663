"""Flask extension: ``Mail(app)`` sends through one pool per app, Flask-Mail style.

Reads Flask-Mail's configuration keys (``MAIL_SERVER``, ``MAIL_PORT``, ``MAIL_USE_TLS``,
``MAIL_USE_SSL``, ``MAIL_USERNAME``, ``MAIL_PASSWORD``, ``MAIL_DEFAULT_SENDER``,
``MAIL_MAX_EMAILS``, ``MAIL_SUPPRESS_SEND``) plus ``SMTPPOOL_URL`` and ``SMTPPOOL_<OPTION>``
keys for the pool.  With ``MAIL_SUPPRESS_SEND`` (default: ``TESTING``) messages are
recorded instead of sent, and the ``email_dispatched`` signal fires either way, so
``record_messages()`` works as in Flask-Mail.  The pool is created on the first send
(after any fork) and closed at interpreter exit.  This module imports Flask.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from blinker import Namespace
from flask import Flask, current_app

from ..config import Options
from ..envelope import Envelope, SendResult
from ..pool import SMTPPool

__all__ = ["Mail", "email_dispatched"]

#: Sent with ``message=`` for every message handed to ``Mail.send`` (as in Flask-Mail).
email_dispatched = Namespace().signal("email-dispatched")


@dataclass
class _State:
    """What ``init_app`` stores in ``app.extensions["smtppool"]``."""

    options: Options
    default_sender: str | None
    suppress: bool
    outbox: list[EmailMessage] = field(default_factory=list)
    pool: SMTPPool | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_pool(self) -> SMTPPool:
        with self.lock:
            if self.pool is None:
                self.pool = SMTPPool(options=self.options)
                atexit.register(self.pool.close)
            return self.pool

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
            atexit.unregister(pool.close)


def _options(config: Any) -> Options:
    """Translate the Flask-Mail keys that are set, then ``SMTPPOOL_*`` keys (which win)."""
    settings: dict[str, Any] = {}
    if "MAIL_SERVER" in config:
        settings["host"] = config["MAIL_SERVER"]
    if config.get("MAIL_PORT"):
        settings["port"] = int(config["MAIL_PORT"])
    if config.get("MAIL_USE_TLS"):
        settings["require_tls"] = True
    if config.get("MAIL_USE_SSL"):
        settings["secure"] = True
    user, password = config.get("MAIL_USERNAME"), config.get("MAIL_PASSWORD")
    if user and password:
        settings["auth"] = (user, password)
    if config.get("MAIL_MAX_EMAILS"):
        settings["max_messages"] = int(config["MAIL_MAX_EMAILS"])
    for key, value in config.items():
        if key.startswith("SMTPPOOL_"):
            settings[key[len("SMTPPOOL_") :].lower()] = value
    return Options.from_settings(**settings)


class Mail:
    """The Flask extension: ``mail = Mail(app)`` or ``mail.init_app(app)`` in a factory."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = app.config
        sender = config.get("MAIL_DEFAULT_SENDER")
        if isinstance(sender, tuple):  # Flask-Mail accepts ("Name", "address")
            sender = f"{sender[0]} <{sender[1]}>"
        app.extensions["smtppool"] = _State(
            options=_options(config),
            default_sender=sender,
            suppress=bool(config.get("MAIL_SUPPRESS_SEND", app.testing)),
        )

    @property
    def state(self) -> _State:
        app = self.app if self.app is not None else current_app
        state: _State = app.extensions["smtppool"]
        return state

    @property
    def outbox(self) -> list[EmailMessage]:
        """Messages recorded instead of sent while sending is suppressed."""
        return self.state.outbox

    @property
    def pool(self) -> SMTPPool:
        """This app's pool (created on first use)."""
        return self.state.get_pool()

    def send(self, message: EmailMessage, envelope: Envelope | None = None) -> SendResult | None:
        """Send ``message`` (``From`` defaults to ``MAIL_DEFAULT_SENDER``); returns the
        result, or None when sending is suppressed and the message was recorded."""
        state = self.state
        if message["From"] is None:
            if state.default_sender is None:
                raise ValueError("message has no From and MAIL_DEFAULT_SENDER is not set")
            message["From"] = state.default_sender
        result = None
        if state.suppress:
            state.outbox.append(message)
        else:
            result = state.get_pool().send(message, envelope)
        app = cast(Any, current_app)._get_current_object()  # the app, not the proxy
        email_dispatched.send(app, message=message)
        return result

    @contextmanager
    def record_messages(self) -> Iterator[list[EmailMessage]]:
        """Collect every message dispatched inside the block (Flask-Mail's testing hook)."""
        seen: list[EmailMessage] = []

        def record(app: Any, message: EmailMessage, **extra: Any) -> None:
            seen.append(message)

        with email_dispatched.connected_to(record):
            yield seen

    def close(self) -> None:
        """Close this app's pool now (it is also closed at exit)."""
        self.state.close()
