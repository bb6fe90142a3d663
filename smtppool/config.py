"""Options: every connection and pool setting in one validated, hashable value.

``SMTPConnection``, ``SMTPPool`` and the integrations all build an :class:`Options`, so
each option is defined, defaulted and checked in exactly one place.  Also builds the
verifying ``ssl.SSLContext`` the ``tls`` option describes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .auth import MECHANISMS, Credentials
from .oauth2 import OAuth2

__all__ = ["TLS_OPTION_KEYS", "Options", "make_ssl_context", "normalise_auth"]

#: Keys accepted in a ``tls={...}`` dict of overrides on the verifying default context.
TLS_OPTION_KEYS = frozenset(
    {
        "cafile",
        "capath",
        "cadata",
        "certfile",
        "keyfile",
        "password",
        "check_hostname",
        "verify",
        "minimum_version",
        "maximum_version",
        "ciphers",
        "server_hostname",
    }
)

TLSOptions = ssl.SSLContext | tuple[tuple[str, Any], ...] | None
AuthOption = Credentials | OAuth2 | None

_UNSAFE_NAME = re.compile(r"[\x00-\x20\x7f]")


def _positive(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _count(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def normalise_auth(auth: object) -> AuthOption:
    """Accept ``("user", "password")``, :class:`Credentials`, :class:`OAuth2` or None."""
    if auth is None or isinstance(auth, (Credentials, OAuth2)):
        return auth
    if isinstance(auth, (tuple, list)) and len(auth) == 2:
        return Credentials(auth[0], auth[1])
    raise TypeError('auth must be ("user", "password"), smtppool.OAuth2(...) or None')


def _normalise_tls(tls: object) -> TLSOptions:
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, Mapping):
        unknown = set(tls) - TLS_OPTION_KEYS
        if unknown:
            raise ValueError(
                f"unknown tls option(s) {sorted(unknown)}; valid: {sorted(TLS_OPTION_KEYS)}"
            )
        return tuple(sorted(tls.items()))
    if isinstance(tls, tuple):
        return _normalise_tls(dict(tls))
    raise TypeError("tls must be an ssl.SSLContext, a dict of overrides, or None")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """All settings of DESIGN.md, validated; ``port=None`` resolves to 465 or 25."""

    host: str = "localhost"
    port: int | None = None
    secure: bool = False
    ignore_tls: bool = False
    require_tls: bool = False
    opportunistic_tls: bool = False
    name: str | None = None
    local_address: str | None = None
    connection_timeout: float = 120.0
    greeting_timeout: float = 30.0
    socket_timeout: float = 600.0
    auth: AuthOption = None
    allow_plaintext_auth: bool = False
    auth_method: str | None = None
    tls: TLSOptions = None
    lmtp: bool = False
    max_connections: int = 5
    max_messages: int = 100
    idle_timeout: float = 30.0
    connection_ttl: float | None = None
    retries: int = 2
    rate_limit: int | None = None
    rate_delta: float = 1.0
    on_idle: Callable[[], object] | None = None
    get_socket: Callable[[Options], Any] | None = None
    logger: logging.Logger | None = None
    debug: bool = False
    transaction_log: bool = False

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        if not isinstance(self.host, str) or not self.host or _UNSAFE_NAME.search(self.host):
            raise ValueError(f"host must be a non-empty name without spaces, not {self.host!r}")
        if self.port is None:
            set_("port", 465 if self.secure else 25)
        else:
            _count("port", self.port, minimum=1)
            if self.port > 65535:
                raise ValueError(f"port must be at most 65535, not {self.port}")
        if self.name is not None and (
            not isinstance(self.name, str) or not self.name or _UNSAFE_NAME.search(self.name)
        ):
            raise ValueError(f"name (for EHLO) must not contain spaces or controls: {self.name!r}")
        if self.ignore_tls and (self.require_tls or self.opportunistic_tls):
            raise ValueError("ignore_tls conflicts with require_tls and opportunistic_tls")
        if self.require_tls and self.opportunistic_tls:
            raise ValueError("require_tls conflicts with opportunistic_tls")
        for timeout in ("connection_timeout", "greeting_timeout", "socket_timeout"):
            _positive(timeout, getattr(self, timeout))
        _positive("idle_timeout", self.idle_timeout)
        _positive("connection_ttl", self.connection_ttl, optional=True)
        _positive("rate_delta", self.rate_delta)
        _count("max_connections", self.max_connections, minimum=1)
        _count("max_messages", self.max_messages, minimum=1)
        _count("retries", self.retries, minimum=0)
        _count("rate_limit", self.rate_limit, minimum=1, optional=True)
        set_("auth", normalise_auth(self.auth))
        if self.auth_method is not None:
            method = str(self.auth_method).upper()
            if method not in MECHANISMS:
                raise ValueError(
                    f"unknown auth_method {self.auth_method!r}; supported: {', '.join(MECHANISMS)}"
                )
            if (method == "XOAUTH2") != isinstance(self.auth, OAuth2):
                raise ValueError("auth_method XOAUTH2 goes with auth=smtppool.OAuth2(...) only")
            set_("auth_method", method)
        set_("tls", _normalise_tls(self.tls))
        for hook in ("on_idle", "get_socket"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                raise TypeError(f"{hook} must be callable")
        if self.logger is not None and not isinstance(self.logger, logging.Logger):
            raise TypeError("logger must be a logging.Logger")

    def replace(self, **changes: Any) -> Options:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def server_hostname(self) -> str:
        """The name the server certificate is checked against (``tls['server_hostname']``)."""
        if isinstance(self.tls, tuple):
            return str(dict(self.tls).get("server_hostname", self.host))
        return self.host


def _tls_version(value: object) -> ssl.TLSVersion:
    """Accept ``ssl.TLSVersion`` members or names such as ``"TLSv1_2"`` or ``"1.3"``."""
    if isinstance(value, ssl.TLSVersion):
        return value
    text = str(value).upper().replace(".", "_")
    text = text[4:] if text.startswith("TLSV") else text
    for name in (str(value), "TLSv" + text):
        if name in ssl.TLSVersion.__members__:
            return ssl.TLSVersion[name]
    raise ValueError(f"unknown TLS version {value!r}; use e.g. 'TLSv1_2'")


@functools.lru_cache(maxsize=32)
def make_ssl_context(tls: TLSOptions) -> ssl.SSLContext:
    """Return the context for ``Options.tls``: verifying by default, overrides applied.

    Cached, since loading the system trust store costs milliseconds per call.
    """
    if isinstance(tls, ssl.SSLContext):
        return tls
    opts = dict(tls or ())
    context = ssl.create_default_context(
        cafile=opts.get("cafile"), capath=opts.get("capath"), cadata=opts.get("cadata")
    )
    if opts.get("verify", True) is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif "check_hostname" in opts:
        context.check_hostname = bool(opts["check_hostname"])
    if "minimum_version" in opts:
        context.minimum_version = _tls_version(opts["minimum_version"])
    if "maximum_version" in opts:
        context.maximum_version = _tls_version(opts["maximum_version"])
    if "ciphers" in opts:
        context.set_ciphers(opts["ciphers"])
    if "certfile" in opts:
        context.load_cert_chain(opts["certfile"], opts.get("keyfile"), opts.get("password"))
    return context
