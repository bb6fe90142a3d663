"""Channel: the dialogue with one server, a transport carrying the sans-IO protocol.

Everything that speaks to the server goes through one :class:`Channel`: the session
opening it (:mod:`smtppool.handshake`), logging in (:mod:`smtppool.login`) and sending
(:mod:`smtppool.transaction`).  It writes command bytes, feeds what the transport reads
to the protocol until a whole reply is parsed, holds that read to a deadline, and logs
the dialogue when asked.  Every exchange runs inside :meth:`Channel.guard`: low-level
errors become :class:`SMTPError`s, and any timeout, protocol error or connection loss
closes the socket, so a desynchronised session can never be reused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from .config import Options
from .errors import ConnectError, ProtocolError, SMTPTimeoutError, TLSError
from .protocol import SMTPProtocol, State
from .replies import Extensions, Reply
from .transport import Transport, translate

__all__ = ["FATAL", "Channel"]

#: Errors after which the session cannot be trusted: the socket is closed.
FATAL = (ConnectError, SMTPTimeoutError, TLSError, ProtocolError)


class Channel:
    """One server's transport and the protocol state of the session on it."""

    def __init__(self, options: Options, log: logging.Logger) -> None:
        self.options = options
        self.log = log
        self.transport = Transport(options)
        self.protocol = SMTPProtocol(lmtp=options.lmtp)
        self._trace = options.transaction_log or options.debug
        #: The most recent reply from the server.
        self.last_reply: Reply | None = None

    def restart(self) -> None:
        """Forget the previous session's protocol state, for a new session."""
        self.protocol = SMTPProtocol(lmtp=self.options.lmtp)

    @property
    def extensions(self) -> Extensions:
        return self.protocol.extensions

    def is_clean(self) -> bool:
        """True when no reply is outstanding and no transaction or exchange is half done."""
        return (
            self.transport.sock is not None
            and self.protocol.pending == 0
            and self.protocol.state in (State.HELLO, State.READY)
        )

    @contextlib.contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """Run an exchange: translate errors; close the socket when unsafe to go on."""
        try:
            try:
                yield
            except OSError as exc:
                translate(exc, doing, self.options.host)
        except BaseException as exc:
            if isinstance(exc, FATAL) or not self.is_clean():
                self.transport.close()
            raise

    def require_ready(self) -> None:
        """Raise unless the session is open, between transactions, with no reply owed."""
        self.transport.connected()
        protocol = self.protocol
        if protocol.state != State.READY or protocol.pending:
            raise ConnectError(f"connection is not ready (state {protocol.state.name})")

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def stream(self, data: bytes) -> None:
        """Write message content (logged only under ``debug``)."""
        if data:
            if self.options.debug:
                self.log.debug("smtp %s content: %r", self.options.host, data)
            self.transport.write(data)

    def write_reading(self, data: bytes) -> None:
        """Write commands and content, taking in replies as they come (see
        :meth:`Transport.write_reading`); they are parsed by the next :meth:`read_reply`."""
        if self.options.debug:
            self.log.debug("smtp %s sending: %r", self.options.host, data)
        self.transport.write_reading(data, self.protocol.receive_data)

    def read_reply(
        self,
        deadline: float | None = None,
        doing: str = "waiting for a reply",
        *,
        closing_ok: bool = False,
    ) -> Reply:
        """Read one whole reply before ``deadline`` (default: ``socket_timeout`` from now).

        The deadline covers the whole reply, so a server dripping bytes cannot extend it.
        A 421 (server closing) raises :class:`ConnectError` unless ``closing_ok``.
        """
        protocol = self.protocol
        reply = protocol.next_reply()  # pipelined replies often arrived together
        if reply is None:
            transport = self.transport
            if deadline is None:
                deadline = time.monotonic() + self.options.socket_timeout
            while reply is None:
                if protocol.peer_closed:
                    by = "aborted" if transport.aborted else "closed by the server"
                    raise ConnectError(f"connection {by} while {doing}")
                protocol.receive_data(transport.receive(deadline, doing))
                reply = protocol.next_reply()
        return self._received(reply, closing_ok)

    def received_reply(self) -> Reply | None:
        """A whole reply already received (by :meth:`write_reading`), or None: no wait."""
        reply = self.protocol.next_reply()
        return None if reply is None else self._received(reply, False)

    def _received(self, reply: Reply, closing_ok: bool) -> Reply:
        self.last_reply = reply
        if self._trace:
            self.log.debug(
                "smtp %s:%s C: %s S: %s", self.options.host, self.options.port, reply.command, reply
            )
        if reply.code == 421 and not closing_ok:
            raise ConnectError.from_reply(reply, "server is closing the session")
        return reply

    def command(self, data: bytes, doing: str = "waiting for a reply") -> Reply:
        """Write one command and read its reply."""
        self.transport.write(data)
        return self.read_reply(doing=doing)

    def expect_positive(self, command: bytes, verb: str) -> Reply:
        """Run a command the session cannot go on without (RSET, NOOP)."""
        reply = self.command(command)
        if not reply.is_positive:
            raise ProtocolError.from_reply(reply, f"{verb} refused")
        return reply
