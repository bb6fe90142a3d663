"""SMTPConnection: one session, its transport's bytes driving the sans-IO protocol.

The session's life: open it (:mod:`smtppool.handshake`), log in (:mod:`smtppool.login`),
send a message (:mod:`smtppool.transaction`) or a run of them
(:mod:`smtppool.pipelining`), check it can be reused, reset, QUIT.  Each exchange runs
inside its channel's guard (:meth:`smtppool.channel.Channel.guard`), so a timeout,
protocol error or connection loss closes the socket and a desynchronised session is
never reused.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple

from .channel import Channel
from .config import Options, normalise_auth
from .envelope import Envelope, SendResult
from .errors import (
    ConnectError,
    SMTPError,
    SMTPTimeoutError,
    TLSError,
)
from .handshake import Handshake
from .login import log_in
from .message import MessageInput
from .pipelining import PipelinedRun
from .protocol import Extensions, Reply, State
from .stacking import StackedRun
from .transaction import Item, Sender

__all__ = ["SMTPConnection", "quit_all"]

#: Longest wait for the reply to QUIT: a graceful goodbye must not hold a shutdown.
QUIT_TIMEOUT = 10.0


class _Pair(NamedTuple):
    """An ``(envelope, message)`` pair as an item of a run (see ``send_each``)."""

    envelope: Envelope | Mapping[str, Any]
    message: MessageInput

    def content(self) -> MessageInput:
        return self.message


class SMTPConnection:
    """A single SMTP/LMTP client connection with blocking I/O and strict deadlines.

    Takes the options :class:`smtppool.Options` lists (``help(smtppool.Options)``; the
    pool's own are accepted and ignored) as keywords, plus ``url=``, or ``options=`` an
    :class:`~smtppool.Options`; ``sock`` is an already-connected socket to use instead
    of dialling.  Use as a context manager to connect, log in and QUIT automatically.
    """

    def __init__(
        self, *, sock: socket.socket | None = None, options: Options | None = None, **settings: Any
    ) -> None:
        if options is None:
            options = Options.from_settings(**settings)
        elif settings:
            options = options.replace(**settings)
        self.options = options
        self._given_sock = sock
        self._log = options.logger or logging.getLogger("smtppool")
        self._channel = Channel(options, self._log)
        self._transport = self._channel.transport
        self._sender = Sender(self._channel)
        #: "implicit" or "STARTTLS" once TLS is up, else None.
        self.tls_mode: str | None = None
        #: Why the session went on without TLS although the server offered STARTTLS
        #: (``opportunistic_tls`` only), else None.
        self.tls_fallback: str | None = None
        #: Messages delivered on this connection (at least one recipient accepted).
        self.messages_sent = 0
        #: ``time.monotonic()`` when the session became ready, for connection_ttl.
        self.connected_at: float | None = None

    # -- properties --------------------------------------------------------------------

    @property
    def secure(self) -> bool:
        """True when the connection is encrypted (implicit TLS or STARTTLS)."""
        return self.tls_mode is not None

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version ("TLSv1.3"), or None without TLS."""
        return self._transport.tls_version

    @property
    def tls_cipher(self) -> str | None:
        """The negotiated cipher suite's name, or None without TLS."""
        return self._transport.tls_cipher

    @property
    def extensions(self) -> Extensions:
        """What the server advertised in its last EHLO/LHLO reply."""
        return self._channel.protocol.extensions

    @property
    def state(self) -> State:
        return self._channel.protocol.state

    @property
    def last_reply(self) -> Reply | None:
        """The most recent reply from the server."""
        return self._channel.last_reply

    @property
    def is_connected(self) -> bool:
        return self._transport.sock is not None

    def __repr__(self) -> str:
        o = self.options
        return (
            f"<SMTPConnection {o.host}:{o.port} tls={self.tls_mode or 'none'} "
            f"state={self.state.name if self.is_connected else 'DISCONNECTED'} "
            f"messages={self.messages_sent}/{o.max_messages}>"
        )

    # -- connecting --------------------------------------------------------------------

    def connect(self) -> None:
        """Open the session: TCP (or the given socket), TLS, greeting, EHLO, STARTTLS.

        Does not log in (see :meth:`login`).

        :raises ConnectError: refused, unreachable, closed, or a non-220 greeting.
        :raises SMTPTimeoutError: ``connection_timeout`` or ``greeting_timeout`` passed.
        :raises TLSError: the TLS handshake failed or STARTTLS was required but impossible.
        """
        if self._transport.sock is not None:
            raise ValueError("already connected")
        try:
            self._connect()
        except SMTPError as exc:  # every connect-stage error says where it happened
            host, port = self.options.host, self.options.port
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            tried = [a for a in self._transport.addresses_tried if a != where]
            if tried:
                where += f" (tried {', '.join(tried)})"
            if not exc.message.startswith(where):
                exc.message = f"{where}: {exc.message}"
                exc.args = (exc.message,)
            raise

    def _connect(self) -> None:
        opts = self.options
        handshake = Handshake(self._channel)
        given, self._given_sock = self._given_sock, None  # used once
        try:
            with self._channel.guard("connecting"):
                handshake.run(given)
        finally:
            self.tls_mode, self.tls_fallback = handshake.tls_mode, handshake.tls_fallback
        self.connected_at = time.monotonic()
        self._log.info(
            "connected to %s:%s (tls=%s, extensions=%s)",
            opts.host,
            opts.port,
            self.tls_mode or "none",
            ",".join(self.extensions) or "-",
        )

    # -- authentication ----------------------------------------------------------------

    def login(self, auth: Any = None) -> None:
        """Authenticate with ``auth`` or the configured credentials; no-op when there are none.

        :raises AuthenticationError: refused, no suitable mechanism, or credentials would
            travel in plaintext to a host that is not loopback.
        """
        credentials = normalise_auth(auth) if auth is not None else self.options.auth
        if credentials is None:
            return
        with self._channel.guard("authenticating"):
            self._channel.require_ready()
            method = log_in(self._channel, credentials, secure=self.secure)
        self._log.info(
            "authenticated to %s as %s with %s", self.options.host, credentials.user, method
        )

    # -- sending -----------------------------------------------------------------------

    def send(self, envelope: Envelope | Mapping[str, Any], message: MessageInput) -> SendResult:
        """Send one message in one transaction and report each recipient's fate.

        Some recipients refused still delivers to the others (see ``SendResult.rejected``).

        :raises EnvelopeError: the sender or every recipient was refused, or an address
            needs SMTPUTF8 that the server lacks.
        :raises MessageError: the message was refused or exceeds the advertised SIZE.
        :raises ConnectError: the connection was lost; ``delivery_unknown`` is set when
            that happened after the end of the data and before the reply.
        """
        env = Envelope.coerce(envelope)
        with self._channel.guard("sending a message"):
            self._channel.require_ready()
        out = self._sender.prepare(message, env)  # the caller's file errors stay its own
        with self._channel.guard("sending a message"):
            result = self._sender.send(out)
        self.messages_sent += 1
        self._log.debug(
            "sent message from <%s> to %d of %d recipient(s): %s",
            env.mail_from,
            len(result.accepted),
            len(env.rcpt_to),
            result.response,
        )
        return result

    # -- runs of messages ----------------------------------------------------------------

    def send_stream(
        self,
        first: tuple[Envelope | Mapping[str, Any], MessageInput],
        more: Callable[[], tuple[Envelope | Mapping[str, Any], MessageInput] | None],
    ) -> Iterator[SendResult | SMTPError]:
        """Send ``first``, then each message ``more()`` returns until it returns None,
        yielding one outcome per message in order (:meth:`send_each` with a callback:
        ``more()`` is called only when the next message can be sent)."""
        items = (_Pair(*item) for item in itertools.chain([first], iter(more, None)))
        for _, outcome in self.send_each(items):
            yield outcome

    @property
    def stacks(self) -> bool:
        """Whether a run on this session stacks transactions: the server offers CHUNKING
        and PIPELINING, the session is not LMTP, and ``stack_messages`` is over 1."""
        ext, opts = self.extensions, self.options
        return (
            "CHUNKING" in ext and "PIPELINING" in ext and not opts.lmtp and opts.stack_messages > 1
        )

    def send_each(self, items: Iterable[Item]) -> Iterator[tuple[Item, SendResult | SMTPError]]:
        """Send each item (an envelope, and ``content()`` asked for once, when it goes
        out) and yield it with its outcome, in order.

        On a PIPELINING server using DATA, each message's content and end of data go out
        in the same write as the next message's MAIL, RCPT and DATA (RFC 2920 lets the
        content transfer open a group): one write and one round trip per message.  On a
        PIPELINING server offering CHUNKING, up to ``stack_messages`` transactions are in
        flight at once, several to a write (:mod:`smtppool.stacking`).  Other servers (and
        LMTP) get one :meth:`send` at a time.  The next item is taken only when it can
        be sent, and never after an outcome that closed the connection; the item
        announced behind a lost end of data comes back with a ConnectError without
        ``delivery_unknown`` (its data never left), so it may be retried.
        """
        stream = iter(items)
        run: Iterable[tuple[Item, SendResult | SMTPError]] | None = None
        if self.stacks:
            run = StackedRun(self._channel, self._sender, stream)
        elif "PIPELINING" in self.extensions and not self.options.lmtp:
            if "CHUNKING" not in self.extensions:
                run = PipelinedRun(self._channel, self._sender, stream)
        if run is not None:
            for item, outcome in run:
                if isinstance(outcome, SendResult):
                    self.messages_sent += 1
                yield item, outcome
            return
        for item in stream:
            try:
                yield item, self.send(item.envelope, item.content())
            except SMTPError as exc:
                yield item, exc
                if not self.is_connected:
                    return

    # -- reuse ---------------------------------------------------------------------------

    def is_within_limits(self) -> bool:
        """The cheap half of :meth:`is_reusable`: idle and clean, and below
        ``max_messages`` and ``connection_ttl``; the socket is not examined."""
        if not self._channel.is_clean() or self.state != State.READY:
            return False
        return self.has_room()

    def has_room(self, pending: int = 0) -> bool:
        """Whether one more message fits below ``max_messages``, counting ``pending``
        messages already handed to this session, and ``connection_ttl`` has not passed."""
        opts = self.options
        if self.messages_sent + pending >= opts.max_messages:
            return False
        ttl, started = opts.connection_ttl, self.connected_at
        return ttl is None or started is None or time.monotonic() - started < ttl

    def is_reusable(self) -> bool:
        """True if the session can carry another message right now.

        False when ``max_messages`` or ``connection_ttl`` is reached, the session is not
        idle and clean, or the server spoke or hung up while we were idle (usually a
        ``421`` idle timeout).  A TLS-aware peek tells real data from TLS records such as
        session tickets, which make an idle socket readable without meaning anything.
        """
        if not self.is_within_limits():
            return False
        opts = self.options
        data = self._transport.idle_data()
        if data is None:
            return True
        if data:
            self._log.info(
                "server %s spoke while idle: %r; discarding the connection", opts.host, data[:200]
            )
        else:
            self._log.debug("server %s closed the idle connection", opts.host)
        return False

    # -- session control ---------------------------------------------------------------

    def reset(self) -> Reply:
        """RSET: abandon any transaction and return to a clean session."""
        with self._channel.guard("resetting"):
            return self._sender.reset()

    def noop(self) -> Reply:
        """NOOP: check that the server still answers."""
        with self._channel.guard("sending NOOP"):
            return self._channel.expect_positive(self._channel.protocol.noop(), "NOOP")

    def quit(self) -> None:
        """Say goodbye and close; a server that just hangs up (even mid-TLS) is fine too."""
        quit_all([self])

    def _send_quit(self) -> float | None:
        """The first half of :func:`quit_all`: write QUIT and return the deadline for its
        reply; None (and the socket closed) when there is no session to say goodbye to."""
        if self._transport.sock is None:
            return None
        try:
            with self._channel.guard("quitting"):
                protocol = self._channel.protocol
                if protocol.state in (State.CLOSED, State.FAILED) or protocol.pending:
                    self.close()
                    return None
                self._channel.write(protocol.quit())
                return time.monotonic() + min(self.options.socket_timeout, QUIT_TIMEOUT)
        except (ConnectError, TLSError, SMTPTimeoutError) as exc:
            self._log.debug("ignoring %s while quitting %s", exc.code, self.options.host)
            self.close()
            return None

    def _await_quit_reply(self, deadline: float) -> None:
        """The second half of :func:`quit_all`: wait for the reply to QUIT, then close."""
        try:
            with self._channel.guard("quitting"):
                self._channel.read_reply(deadline, "quitting", closing_ok=True)
        except SMTPError as exc:  # whatever the goodbye was (even malformed), we are done
            self._log.debug("ignoring %s while quitting %s", exc.code, self.options.host)
        finally:
            self.close()

    def abort(self) -> None:
        """Cut the session from another thread: a read or write blocked on the socket
        returns at once and fails (a connection lost after the end of the data is
        ``delivery_unknown``, as ever), and a dial in progress stops.  The thread using
        the connection closes it when its call fails."""
        self._transport.abort()

    def close(self) -> None:
        """Close the socket at once; idempotent and never raises."""
        self._transport.close()

    def __enter__(self) -> SMTPConnection:
        if self._transport.sock is None:
            self.connect()
            try:
                self.login()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.quit()
        else:
            self.close()


def quit_all(connections: Iterable[SMTPConnection]) -> None:
    """QUIT several sessions at once and close them: every QUIT is written before any
    reply is awaited, so closing N connections takes one round trip, not N."""
    said = [(c, deadline) for c in connections if (deadline := c._send_quit()) is not None]
    try:
        for connection, deadline in said:
            connection._await_quit_reply(deadline)
    finally:  # a reply that raised (say, a malformed one) must not leave the others open
        for connection, _ in said:
            connection.close()
