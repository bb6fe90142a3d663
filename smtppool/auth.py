"""SASL mechanisms for SMTP AUTH (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) as pure encoders.

Each mechanism answers server challenges with bytes; the connection drives the 334
loop and the protocol does the base64 framing.  Secrets never appear in a ``repr``.
No sockets, threads or clocks here (the OAuth2 token provider lives in ``oauth2``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from .errors import AuthenticationError

__all__ = [
    "MECHANISMS",
    "PASSWORD_PREFERENCE",
    "Credentials",
    "Mechanism",
    "check_method_fits",
    "check_oauth2_value",
    "choose_mechanism",
    "make_mechanism",
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password; the password never shows in ``repr``."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.user, str) or not isinstance(self.password, str):
            raise TypeError("auth user and password must be str")
        for what, value in (("user", self.user), ("password", self.password)):
            if "\0" in value:  # PLAIN's field separator: it would re-split the fields
                raise ValueError(f"auth {what} must not contain a NUL character")

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='****')"


def check_oauth2_value(what: str, value: str) -> str:
    """Refuse a control character in an XOAUTH2 field: ``\\x01`` separates the fields.

    :raises ValueError: the value holds a control character.
    """
    if not isinstance(value, str):
        raise TypeError(f"OAuth2 {what} must be a str, not {type(value).__name__}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError(f"OAuth2 {what} must not contain control characters")
    return value


def check_method_fits(method: str, *, oauth2: bool) -> None:
    """XOAUTH2 takes OAuth2 credentials and every other method a password.

    :raises ValueError: ``method`` does not fit the credentials.
    """
    method = method.upper()
    if (method == "XOAUTH2") != oauth2:
        needs = "auth=smtppool.OAuth2(...)" if method == "XOAUTH2" else "a user and password"
        raise ValueError(f"auth_method {method} needs {needs}")


class Mechanism(Protocol):
    """One SASL exchange: an optional initial response, then an answer per challenge."""

    name: str

    def initial_response(self) -> bytes | None: ...

    def respond(self, challenge: bytes) -> bytes: ...


class _Plain:
    """RFC 4616: ``\\0user\\0password`` in the AUTH command itself."""

    name = "PLAIN"

    def __init__(self, user: str, secret: str) -> None:
        Credentials(user, secret)  # the same checks: a NUL would re-split the fields
        self._payload = b"\0" + user.encode() + b"\0" + secret.encode()

    def initial_response(self) -> bytes | None:
        return self._payload

    def respond(self, challenge: bytes) -> bytes:
        return self._payload


class _Login:
    """The de-facto LOGIN mechanism: user name, then password, each on request."""

    name = "LOGIN"

    def __init__(self, user: str, secret: str) -> None:
        self._answers = [user.encode(), secret.encode()]

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise AuthenticationError("AUTH LOGIN: server asked for more than user and password")
        return self._answers.pop(0)


class _CramMD5:
    """RFC 2195: ``user`` and the HMAC-MD5 of the server's challenge keyed by the password."""

    name = "CRAM-MD5"

    def __init__(self, user: str, secret: str) -> None:
        self._user = user
        self._secret = secret.encode()

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        digest = hmac.new(self._secret, challenge, hashlib.md5).hexdigest()
        return f"{self._user} {digest}".encode()


class _XOAuth2:
    """Google/Microsoft XOAUTH2: a bearer token; an error challenge is answered empty."""

    name = "XOAUTH2"

    def __init__(self, user: str, secret: str) -> None:
        check_oauth2_value("user", user)
        check_oauth2_value("access token", secret)  # also one a token endpoint returned
        self._payload = f"user={user}\x01auth=Bearer {secret}\x01\x01".encode()

    def initial_response(self) -> bytes | None:
        return self._payload

    def respond(self, challenge: bytes) -> bytes:
        return b""  # the challenge is a JSON error; an empty answer gets the final 535


#: Mechanism name -> class taking ``(user, secret)``; the secret is a token for XOAUTH2.
MECHANISMS: dict[str, type[_Plain | _Login | _CramMD5 | _XOAuth2]] = {
    cls.name: cls for cls in (_Plain, _Login, _CramMD5, _XOAuth2)
}
#: Order tried for a password when the caller forces nothing (smtplib's order).
PASSWORD_PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")


def make_mechanism(name: str, user: str, secret: str) -> Mechanism:
    """Build the mechanism called ``name`` for ``user`` with a password or token."""
    try:
        cls = MECHANISMS[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown AUTH mechanism {name!r}; supported: {', '.join(MECHANISMS)}"
        ) from None
    return cls(user, secret)


def choose_mechanism(advertised: Collection[str], *, oauth2: bool, forced: str | None) -> str:
    """Pick the mechanism to use; never silently a different one from what was asked.

    A forced method is used as given (the server's reply then says if it refuses it).

    :raises ValueError: the forced method does not fit the credentials.
    :raises AuthenticationError: nothing the server offers fits these credentials.
    """
    if forced is not None:
        check_method_fits(forced, oauth2=oauth2)
        return forced.upper()
    offered = {m.upper() for m in advertised}
    wanted = ("XOAUTH2",) if oauth2 else PASSWORD_PREFERENCE
    for name in wanted:
        if name in offered:
            return name
    raise AuthenticationError(
        f"no usable AUTH mechanism: server offers {', '.join(sorted(offered)) or 'none'}, "
        f"these credentials need one of {', '.join(wanted)}"
    )
