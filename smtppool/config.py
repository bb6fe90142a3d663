"""Options: every connection and pool setting in one validated, hashable value.

``SMTPConnection``, ``SMTPPool`` and the integrations all build an :class:`Options`
(through :meth:`Options.from_settings`), so each option is defined, defaulted and
checked in one place.  Settings come from a well-known service (``services.json``), then
an ``smtp://`` URL, then explicit keywords, each overriding the one before.  Also builds
the verifying ``ssl.SSLContext`` the ``tls`` option describes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import inspect
import json
import logging
import math
import re
import ssl
import textwrap
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .auth import MECHANISMS, Credentials, check_method_fits
from .oauth2 import OAuth2

__all__ = [
    "OPTION_HELP",
    "TLS_OPTION_KEYS",
    "Options",
    "describe_options",
    "lookup_service",
    "make_ssl_context",
    "normalise_auth",
    "parse_url",
]

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


#: What each option means, in the order the README documents them; the docstrings of
#: SMTPPool and SMTPConnection and the README's table are built from, or checked
#: against, this one table.
OPTION_HELP: dict[str, str] = {
    "host": "server name or address (IPv4 and IPv6; each resolved address is tried in turn)",
    "port": "465 when ``secure`` else 25",
    "secure": "implicit TLS from the first byte (SMTPS)",
    "ignore_tls": "never use STARTTLS",
    "require_tls": "fail with ``TLSError`` unless STARTTLS succeeds",
    "opportunistic_tls": (
        "if STARTTLS fails, continue in plaintext (redials after a failed handshake); "
        "logged at WARNING with the reason each time, ``connection.tls_fallback`` and "
        '``stats()["tls_fallbacks"]`` count it'
    ),
    "name": (
        "EHLO name; default ``socket.getfqdn()``, or an address literal when that is not "
        "a dotted name"
    ),
    "local_address": "source address to bind",
    "connection_timeout": "seconds for name resolution, TCP connect and TLS handshake together",
    "greeting_timeout": "deadline for the whole greeting",
    "socket_timeout": (
        "deadline for each whole reply, and for the server to take each piece of the message"
    ),
    "auth": (
        '``("user", "password")`` or ``smtppool.OAuth2(...)``; a NUL (or, for OAuth2, any '
        "control character) is a ``ValueError``: it would re-split the SASL fields"
    ),
    "auth_method": (
        'force ``"PLAIN"``, ``"LOGIN"``, ``"CRAM-MD5"`` or ``"XOAUTH2"``; otherwise '
        "CRAM-MD5, PLAIN, LOGIN in that order of preference. Never silently downgraded. "
        "Checked against the credentials once they are known (``auth=``, or "
        "``login(auth=...)`` later)"
    ),
    "allow_plaintext_auth": "send credentials without TLS to a host that is not loopback",
    "tls": (
        "an ``ssl.SSLContext``, or a dict of overrides on a verifying default context: "
        "``cafile``, ``capath``, ``cadata``, ``certfile``, ``keyfile``, ``password``, "
        "``verify``, ``check_hostname``, ``minimum_version``, ``maximum_version``, "
        "``ciphers``, ``server_hostname``"
    ),
    "lmtp": "speak LMTP: ``LHLO`` and one result per recipient",
    "get_socket": (
        "``callable(options)`` returning a connected socket, or ``None`` to dial normally"
    ),
    "logger": 'a ``logging.Logger``; default ``"smtppool"``',
    "transaction_log": "log the SMTP dialogue (AUTH payloads redacted) at DEBUG",
    "debug": "also log message content at DEBUG",
    "add_missing_headers": (
        "add ``Date`` and ``Message-ID`` to an ``email.message.Message`` that lacks them "
        "(raw bytes, text, files and iterables go as they are)"
    ),
    "stack_messages": (
        "on a server offering CHUNKING and PIPELINING, messages a connection keeps in "
        "flight ahead of their replies in a run (``1``: one at a time)"
    ),
    "stack_bytes": (
        "the same window in bytes of commands and content awaiting replies (one message "
        "larger than this still goes, its chunks paced by their replies)"
    ),
    "service": "a well-known provider's host, port and TLS mode",
    "max_connections": "pool: connections (and worker threads) at most",
    "max_messages": "pool: messages per connection before it is replaced",
    "idle_timeout": "pool: QUIT connections idle this long",
    "connection_ttl": "pool: retire connections older than this",
    "retries": "pool: extra attempts for messages provably not taken",
    "pool_timeout": (
        "pool: how long a message waits while no connection is open and none can be "
        "opened (``None``: no bound)"
    ),
    "rate_limit": "pool: messages started per ``rate_delta`` at most",
    "rate_delta": "pool: the rate window, in seconds",
    "on_idle": "pool: ``callable()`` run when a slot frees up",
}


def describe_options() -> str:
    """The options as a docstring section: each with its default and meaning."""
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    lines = ["Options (keyword arguments, validated by :class:`smtppool.Options`):", ""]
    for name, meaning in OPTION_HELP.items():
        default = defaults.get(name)  # service is a setting, not a field: None
        text = textwrap.fill(meaning.removeprefix("pool: "), 84, initial_indent="    ",
                             subsequent_indent="    ", break_on_hyphens=False)  # fmt: skip
        lines += [f"``{name}`` = ``{default!r}``", text]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Every setting of a connection and a pool, validated in one place; ``port=None``
    resolves to 465 or 25.  :data:`OPTION_HELP` says what each one means."""

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
    pool_timeout: float | None = 30.0
    rate_limit: int | None = None
    rate_delta: float = 1.0
    on_idle: Callable[[], object] | None = None
    get_socket: Callable[[Options], Any] | None = None
    logger: logging.Logger | None = None
    debug: bool = False
    transaction_log: bool = False
    add_missing_headers: bool = True
    stack_messages: int = 16
    stack_bytes: int = 512 * 1024

    def __repr__(self) -> str:
        """Every setting, secrets masked: the password (in ``Credentials``), OAuth2 tokens
        (in ``OAuth2``) and the TLS key passphrase."""
        tls = self.tls
        if isinstance(tls, tuple):
            tls = tuple((k, "****" if k == "password" else v) for k, v in tls)
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["tls"] = tls
        return f"Options({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

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
        _positive("pool_timeout", self.pool_timeout, optional=True)
        _positive("rate_delta", self.rate_delta)
        _count("max_connections", self.max_connections, minimum=1)
        _count("max_messages", self.max_messages, minimum=1)
        _count("retries", self.retries, minimum=0)
        _count("stack_messages", self.stack_messages, minimum=1)
        _count("stack_bytes", self.stack_bytes, minimum=1)
        _count("rate_limit", self.rate_limit, minimum=1, optional=True)
        set_("auth", normalise_auth(self.auth))
        if self.auth_method is not None:
            method = str(self.auth_method).upper()
            if method not in MECHANISMS:
                raise ValueError(
                    f"unknown auth_method {self.auth_method!r}; supported: {', '.join(MECHANISMS)}"
                )
            if self.auth is not None:  # else login(auth=...) checks it
                check_method_fits(method, oauth2=isinstance(self.auth, OAuth2))
            set_("auth_method", method)
        set_("tls", _normalise_tls(self.tls))
        for hook in ("on_idle", "get_socket"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                raise TypeError(f"{hook} must be callable")
        if self.logger is not None and not isinstance(self.logger, logging.Logger):
            raise TypeError("logger must be a logging.Logger")

    @classmethod
    def from_settings(
        cls, *, url: str | None = None, service: str | None = None, **settings: Any
    ) -> Options:
        """Merge service defaults, then ``url``, then explicit ``settings`` (each wins)."""
        from_url = parse_url(url) if url is not None else {}
        service = service or from_url.pop("service", None)
        merged = dict(lookup_service(service)) if service else {}
        merged.update(from_url)
        merged.update(settings)
        unknown = set(merged) - _FIELD_NAMES
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(_FIELD_NAMES)}")
        return cls(**merged)

    def replace(self, **changes: Any) -> Options:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def server_hostname(self) -> str:
        """The name the server certificate is checked against (``tls['server_hostname']``)."""
        if isinstance(self.tls, tuple):
            return str(dict(self.tls).get("server_hostname", self.host))
        return self.host


#: help(Options) lists every option with its default and meaning, from the one table.
Options.__doc__ = f"{inspect.cleandoc(Options.__doc__ or '')}\n\n{describe_options()}"


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


#: Each Options field's annotation, as text: what URL option values are coerced to.
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Options)}
_FIELD_NAMES = frozenset(_FIELD_TYPES)

# -- well-known services ---------------------------------------------------------------


def _service_key(name: str) -> str:
    """Normalise like Nodemailer: an address counts by its domain; keep [a-z0-9.-]."""
    return re.sub(r"[^a-z0-9.-]", "", name.rpartition("@")[2].lower())


@functools.cache
def _services() -> dict[str, dict[str, Any]]:
    text = (importlib.resources.files("smtppool") / "services.json").read_text("utf-8")
    index: dict[str, dict[str, Any]] = {}
    for name, entry in json.loads(text).items():
        settings = {k: v for k, v in entry.items() if k not in ("aliases", "domains")}
        for key in (name, *entry.get("aliases", ()), *entry.get("domains", ())):
            index.setdefault(_service_key(key), settings)
    return index


def lookup_service(name: str) -> Mapping[str, Any]:
    """Settings (host, port, secure, ...) of a well-known service, by name, alias, domain
    or email address, case-insensitively.

    :raises ValueError: the service is not known.
    """
    try:
        return _services()[_service_key(name)]
    except KeyError:
        raise ValueError(
            f"unknown service {name!r}; the known ones are listed in smtppool/services.json"
        ) from None


# -- smtp:// URLs ------------------------------------------------------------------------

_URL_SCHEMES: dict[str, dict[str, Any]] = {
    "smtp": {"secure": False},
    "smtps": {"secure": True},
    "lmtp": {"lmtp": True, "secure": False},
}
_DURATIONS = frozenset(
    {
        "connection_timeout",
        "greeting_timeout",
        "socket_timeout",
        "idle_timeout",
        "connection_ttl",
        "pool_timeout",
        "rate_delta",
    }
)
_NOT_IN_URLS = frozenset({"auth", "tls", "on_idle", "get_socket", "logger"})
#: Nodemailer's ``tls.*`` names, translated to ours.
_NODEMAILER_TLS = {
    "rejectUnauthorized": "verify",
    "servername": "server_hostname",
    "minVersion": "minimum_version",
    "maxVersion": "maximum_version",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: str, kind: str) -> Any:
    if "None" in kind and value.lower() in ("", "none"):
        return None
    try:
        if "bool" in kind:
            if value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError(value)
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
    except ValueError:
        raise ValueError(f"URL option {name}={value!r} is not a valid {kind}") from None
    return value


def _url_option(key: str, value: str) -> tuple[str, Any]:
    """Translate one query parameter; camelCase (Nodemailer) durations are milliseconds."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    if name == "service":
        return name, value
    kind = _FIELD_TYPES.get(name)
    if kind is None or name in _NOT_IN_URLS:
        valid = sorted(set(_FIELD_TYPES) - _NOT_IN_URLS | {"service", "tls.<option>"})
        raise ValueError(f"unknown URL option {key!r}; valid: {', '.join(valid)}")
    coerced = _coerce(key, value, kind)
    if name in _DURATIONS and name != key:  # camelCase: Nodemailer's milliseconds
        coerced = coerced / 1000.0
    return name, coerced


def parse_url(url: str) -> dict[str, Any]:
    """Settings from ``smtp://``, ``smtps://`` or ``lmtp://user:password@host:port/?options``.

    User and password are percent-decoded; query options use the Python names or
    Nodemailer's camelCase ones; ``tls.<key>`` sets a ``tls`` override.

    :raises ValueError: an unsupported scheme, a bad port, or an unknown or invalid option.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _URL_SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r}; use smtp://, smtps:// or lmtp://")
    settings: dict[str, Any] = dict(_URL_SCHEMES[scheme])
    if parts.hostname:
        settings["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in URL {scheme}://{parts.hostname}:...") from None
    if port is not None:
        settings["port"] = port
    if parts.username is not None:
        password = urllib.parse.unquote(parts.password or "")
        settings["auth"] = (urllib.parse.unquote(parts.username), password)
    tls: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key.startswith("tls."):
            option = _NODEMAILER_TLS.get(key[4:], key[4:])
            boolean = option in ("verify", "check_hostname")
            tls[option] = _coerce(key, value, "bool") if boolean else value
        elif key != "pool":  # Nodemailer's pool=true: we always pool
            name, coerced = _url_option(key, value)
            settings[name] = coerced
    if tls:
        settings["tls"] = tls
    return settings
