"""Django email backend: Django's SMTP backend, with a shared, persistent connection pool.

``EmailBackend`` subclasses ``django.core.mail.backends.smtp.EmailBackend`` of the
installed Django, so settings (``EMAIL_*`` in Django 5.2, ``MAILERS`` ``OPTIONS`` in 6.1),
validation and address handling are exactly Django's.  Only the transport differs:
Django builds a backend per ``send_mail()`` and opens a fresh connection each time; here
every backend with the same settings shares one process-wide :class:`SMTPPool`, so a
view's mail goes out over a warm connection.  Pool options come from the ``SMTPPOOL``
setting (a dict) and, under ``MAILERS``, from ``OPTIONS``.

This module imports Django; the rest of smtppool never does.
"""

from __future__ import annotations

import atexit
import email.policy
import email.utils
import threading
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail.backends import smtp as django_smtp
from django.core.mail.message import EmailMessage

from ..config import Options
from ..envelope import Envelope, SendResult
from ..errors import SMTPError
from ..pool import SMTPPool

__all__ = ["EmailBackend", "POOL_OPTIONS"]

#: Options a backend accepts besides Django's own (in ``SMTPPOOL`` or ``OPTIONS``): the
#: pool's, plus ``parallel`` (send one call's messages concurrently; they may then arrive
#: in any order, where Django's backend delivers them in order).
POOL_OPTIONS = frozenset(
    {
        "parallel",
        "url",
        "service",
        "max_connections",
        "max_messages",
        "stack_messages",
        "stack_bytes",
        "idle_timeout",
        "connection_ttl",
        "retries",
        "pool_timeout",
        "rate_limit",
        "rate_delta",
        "allow_plaintext_auth",
        "auth_method",
        "name",
        "local_address",
        "opportunistic_tls",
        "tls",
        "transaction_log",
        "add_missing_headers",
        "debug",
        "logger",
    }
)

_pools: dict[Options, SMTPPool] = {}
_pools_lock = threading.Lock()


def shared_pool(options: Options) -> SMTPPool:
    """The process-wide pool for ``options``; a new one is verified before it is shared,
    so bad settings fail at ``open()``, as with Django's backend."""
    with _pools_lock:
        pool = _pools.get(options)
    if pool is not None:
        return pool
    candidate = SMTPPool(options=options)
    try:
        candidate.verify()
    except BaseException:
        candidate.close()
        raise
    with _pools_lock:
        pool = _pools.setdefault(options, candidate)
    if pool is not candidate:  # another thread won the race
        candidate.close()
    return pool


def close_pools(wait: bool = True) -> None:
    """Close every shared pool (registered with ``atexit``; also handy in tests)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close(wait=wait)


atexit.register(close_pools)


class EmailBackend(django_smtp.EmailBackend):  # type: ignore[misc]
    """Drop-in for ``django.core.mail.backends.smtp.EmailBackend`` backed by a shared pool.

    Differences from Django's backend, all on the side of safety: when ``use_tls`` is
    off, STARTTLS is still used if the server offers it, and a failed handshake is a
    ``TLSError`` (``"opportunistic_tls": True`` among the pool options falls back to
    plaintext instead, logged and counted); credentials are not sent unencrypted to a
    non-loopback host unless ``allow_plaintext_auth`` is set.
    """

    connection: SMTPPool | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pool_options = dict(getattr(settings, "SMTPPOOL", {}) or {})
        pool_options.update({k: kwargs.pop(k) for k in list(kwargs) if k in POOL_OPTIONS})
        unknown = set(pool_options) - POOL_OPTIONS
        if unknown:
            raise ValueError(f"unknown SMTPPOOL option(s) {sorted(unknown)}")
        super().__init__(*args, **kwargs)
        self.pool_options = pool_options

    @property
    def options(self) -> Options:
        """The smtppool options these Django settings translate to."""
        timeout = self.timeout
        timeouts = (
            {}
            if timeout is None
            else {
                "connection_timeout": timeout,
                "greeting_timeout": timeout,
                "socket_timeout": timeout,
                "pool_timeout": timeout,  # nor wait longer for a connection
            }
        )
        tls = (
            {"certfile": self.ssl_certfile, "keyfile": self.ssl_keyfile}
            if (self.ssl_certfile or self.ssl_keyfile)
            else None
        )
        django_settings: dict[str, Any] = {
            "port": int(self.port) if self.port else None,
            "secure": bool(self.use_ssl),
            "require_tls": bool(self.use_tls and not self.use_ssl),
            "auth": (self.username, self.password) if self.username and self.password else None,
            "name": str(django_smtp.DNS_NAME.get_fqdn()),
            "tls": tls,
            **timeouts,
        }
        if self.host:
            django_settings["host"] = self.host
        merged = {**django_settings, **self.pool_options}
        merged.pop("parallel", None)
        if merged.get("require_tls") and merged.get("opportunistic_tls"):
            merged["opportunistic_tls"] = False  # EMAIL_USE_TLS: the safer choice wins
        return Options.from_settings(**merged)

    def open(self) -> bool | None:
        """Attach to the shared pool: True when newly attached, False when already attached,
        None when it failed and ``fail_silently`` is set (Django's contract)."""
        if self.connection is not None:
            return False
        try:
            self.connection = shared_pool(self.options)
        except SMTPError:
            if not self.fail_silently:
                raise
            return None
        return True

    def close(self) -> None:
        """Detach from the shared pool, which stays open for the next backend."""
        self.connection = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Submit every message to the pool, wait, and return how many were sent."""
        if not email_messages:
            return 0
        attached = self.open()
        if self.connection is None or attached is None:
            return 0
        try:
            prepared = [
                (data, envelope)
                for envelope, data in map(self._prepare, email_messages)
                if envelope is not None
            ]
            if self.pool_options.get("parallel"):
                outcomes = list(self.connection.send_many(prepared, window=len(prepared) or 1))
            else:  # in order, as Django's backend: each message once the previous is done
                outcomes = [self._send_one(data, envelope) for data, envelope in prepared]
            sent = 0
            for outcome in outcomes:
                if isinstance(outcome, SMTPError):
                    if not self.fail_silently:
                        raise outcome
                else:
                    sent += 1
            return sent
        finally:
            if attached:
                self.close()

    def _send_one(self, data: bytes, envelope: Envelope) -> SendResult | SMTPError:
        assert self.connection is not None
        try:
            return self.connection.send(data, envelope)
        except SMTPError as exc:
            if not self.fail_silently:
                raise
            return exc

    def _prepare(self, message: EmailMessage) -> tuple[Envelope | None, bytes]:
        """Envelope and bytes exactly as the installed Django's SMTP backend makes them."""
        if not message.recipients():
            return None, b""
        if hasattr(self, "prep_address"):  # Django 6.1+
            sender = self.prep_address(message.from_email)
            recipients = [self.prep_address(a) for a in message.recipients()]
            data = message.message(policy=email.policy.SMTP).as_bytes()
        else:  # Django 5.2: sanitize_address, then the addr-spec as smtplib's quoteaddr takes it
            encoding = message.encoding or settings.DEFAULT_CHARSET

            def prep(address: str) -> str:
                return email.utils.parseaddr(django_smtp.sanitize_address(address, encoding))[1]

            sender = prep(message.from_email)
            recipients = [prep(a) for a in message.recipients()]
            data = message.message().as_bytes(linesep="\r\n")
        return Envelope(sender, recipients), data
