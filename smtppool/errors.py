"""The exception hierarchy: one class per failure kind, each carrying the server's answer.

Every error is an :class:`smtplib.SMTPException`, so ``except smtplib.SMTPException``
handlers written for smtplib keep working.  Server replies become errors in exactly
one place, :meth:`SMTPError.from_reply`.  This module imports nothing from smtppool.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .replies import Reply

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "EnvelopeError",
    "MessageError",
    "PoolClosedError",
    "PoolTimeoutError",
    "ProtocolError",
    "SMTPError",
    "SMTPTimeoutError",
    "TLSError",
]

_E = TypeVar("_E", bound="SMTPError")


class SMTPError(smtplib.SMTPException):
    """Base class of every smtppool error.

    Takes exactly one positional argument (``OSError`` would read two as
    ``errno, strerror``); everything else is keyword-only with a default, so the
    error survives ``pickle`` and ``copy`` (``OSError.__reduce__`` calls ``cls(*args)``).
    """

    #: Machine-readable failure kind (Nodemailer's ``err.code``).
    code: str = "ESMTP"
    #: Whether a failure that came without a server reply may be cured by trying later.
    transient_without_reply: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        response: str | None = None,
        response_code: int | None = None,
        command: str | None = None,
        delivery_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        #: The server's reply, code included (``"550 5.1.1 No such user"``), or None.
        self.response = response
        self.response_code = response_code
        #: The command that failed, with credentials redacted, or None.
        self.command = command
        #: True only when the connection was lost after the end of the message data
        #: and before the server's reply: the message may or may not have been accepted.
        self.delivery_unknown = delivery_unknown

    @property
    def temporary(self) -> bool:
        """True for 4xx replies and connection-level failures a later attempt may cure."""
        if self.response_code is not None:
            return 400 <= self.response_code < 500
        return self.transient_without_reply

    @classmethod
    def from_reply(cls: type[_E], reply: Reply, message: str | None = None) -> _E:
        """Turn a server reply into an error; the single place where that happens."""
        text = message or f"{reply.command or 'server'} failed"
        return cls(
            text,
            response=str(reply),
            response_code=reply.code,
            command=reply.command,
        )

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        if self.response is not None:
            text += f" (server said: {self.response})"
        if self.delivery_unknown:
            text += " [delivery unknown: the message may have been accepted]"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, "
            f"response_code={self.response_code!r}, command={self.command!r})"
        )


class ConnectError(SMTPError, ConnectionError):
    """The connection could not be made, or was refused, reset or closed unexpectedly."""

    code = "ECONNECTION"
    transient_without_reply = True


class SMTPTimeoutError(SMTPError, TimeoutError):
    """A deadline passed: connecting, waiting for a reply, or sending data."""

    code = "ETIMEDOUT"
    transient_without_reply = True


class PoolTimeoutError(SMTPTimeoutError):
    """A wait for the outcome (``send(timeout=...)``) ended while the message still
    waited its turn: it was withdrawn and will never be sent."""


class TLSError(SMTPError, ssl.SSLError):
    """TLS could not be set up: handshake failure, untrusted certificate, no STARTTLS."""

    code = "ETLS"


class AuthenticationError(SMTPError):
    """Login failed, or was refused before any credential was sent."""

    code = "EAUTH"


class EnvelopeError(SMTPError):
    """The sender was refused, or every recipient was."""

    code = "EENVELOPE"


class MessageError(SMTPError):
    """The message itself was refused (content, size)."""

    code = "EMESSAGE"


class ProtocolError(SMTPError):
    """The server's reply was malformed or not what the protocol allows."""

    code = "EPROTOCOL"


class RateLimitError(SMTPError):
    """A shared rate limiter could not be consulted (its store is unreachable); nothing
    was sent.  Temporary: a later attempt may succeed."""

    code = "ELIMIT"
    transient_without_reply = True


class PoolClosedError(SMTPError):
    """The pool was closed before the message could be sent."""

    code = "ECLOSED"
