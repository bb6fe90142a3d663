"""SMTPConnection: one session, its transport's bytes driving the sans-IO protocol.

The socket, its deadlines and the translation of low-level errors live in
:mod:`smtppool.transport`; here every public operation runs inside :meth:`_guard`, and
any timeout, protocol error or connection loss closes the socket, so a desynchronised
session can never be reused.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .auth import Credentials, choose_mechanism, make_mechanism
from .config import Options, normalise_auth
from .envelope import Envelope, SendResult
from .errors import (
    AuthenticationError,
    ConnectError,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPError,
    SMTPTimeoutError,
    TLSError,
)
from .message import MessageInput, MessageSource
from .oauth2 import OAuth2
from .protocol import Extensions, Reply, SMTPProtocol, State, decode_challenge
from .transaction import Sender
from .transport import Transport, local_fqdn, translate

__all__ = ["SMTPConnection", "quit_all"]

#: Longest wait for the reply to QUIT: a graceful goodbye must not hold a shutdown.
QUIT_TIMEOUT = 10.0
#: Most 334 challenges accepted in one AUTH exchange.
MAX_AUTH_ROUNDS = 10

# Errors after which the session cannot be trusted: the socket is closed.
_FATAL = (ConnectError, SMTPTimeoutError, TLSError, ProtocolError)


class SMTPConnection:
    """A single SMTP/LMTP client connection with blocking I/O and strict deadlines.

    Takes the options below as keywords (the pool's own are accepted and ignored), plus
    ``url=``, or ``options=`` an :class:`~smtppool.config.Options`; ``sock`` is an
    already-connected socket to use instead of dialling.  Use as a context manager to
    connect, log in and QUIT automatically.  (The list is the one ``describe_options``
    writes; a test keeps them equal, since a compiled class's docstring is fixed.)

    Options (keyword arguments, validated by :class:`smtppool.Options`):

    ``host`` = ``'localhost'``
        server name or address (IPv4 and IPv6; each resolved address is tried in turn)
    ``port`` = ``None``
        465 when ``secure`` else 25
    ``secure`` = ``False``
        implicit TLS from the first byte (SMTPS)
    ``ignore_tls`` = ``False``
        never use STARTTLS
    ``require_tls`` = ``False``
        fail with ``TLSError`` unless STARTTLS succeeds
    ``opportunistic_tls`` = ``False``
        if STARTTLS fails, continue in plaintext (redials after a failed handshake);
        logged at WARNING with the reason each time, ``connection.tls_fallback`` and
        ``stats()["tls_fallbacks"]`` count it
    ``name`` = ``None``
        EHLO name; default ``socket.getfqdn()``, or an address literal when that is not
        a dotted name
    ``local_address`` = ``None``
        source address to bind
    ``connection_timeout`` = ``120.0``
        seconds for name resolution, TCP connect and TLS handshake together
    ``greeting_timeout`` = ``30.0``
        deadline for the whole greeting
    ``socket_timeout`` = ``600.0``
        deadline for each whole reply, and for the server to take each piece of the
        message
    ``auth`` = ``None``
        ``("user", "password")`` or ``smtppool.OAuth2(...)``; a NUL (or, for OAuth2, any
        control character) is a ``ValueError``: it would re-split the SASL fields
    ``auth_method`` = ``None``
        force ``"PLAIN"``, ``"LOGIN"``, ``"CRAM-MD5"`` or ``"XOAUTH2"``; otherwise
        CRAM-MD5, PLAIN, LOGIN in that order of preference. Never silently downgraded.
        Checked against the credentials once they are known (``auth=``, or
        ``login(auth=...)`` later)
    ``allow_plaintext_auth`` = ``False``
        send credentials without TLS to a host that is not loopback
    ``tls`` = ``None``
        an ``ssl.SSLContext``, or a dict of overrides on a verifying default context:
        ``cafile``, ``capath``, ``cadata``, ``certfile``, ``keyfile``, ``password``,
        ``verify``, ``check_hostname``, ``minimum_version``, ``maximum_version``,
        ``ciphers``, ``server_hostname``
    ``lmtp`` = ``False``
        speak LMTP: ``LHLO`` and one result per recipient
    ``get_socket`` = ``None``
        ``callable(options)`` returning a connected socket, or ``None`` to dial normally
    ``logger`` = ``None``
        a ``logging.Logger``; default ``"smtppool"``
    ``transaction_log`` = ``False``
        log the SMTP dialogue (AUTH payloads redacted) at DEBUG
    ``debug`` = ``False``
        also log message content at DEBUG
    ``add_missing_headers`` = ``True``
        add ``Date`` and ``Message-ID`` to an ``email.message.Message`` that lacks them
        (raw bytes, text, files and iterables go as they are)
    ``service`` = ``None``
        a well-known provider's host, port and TLS mode
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
        self._transport = Transport(options)
        self._protocol = SMTPProtocol(lmtp=options.lmtp)
        self._log = options.logger or logging.getLogger("smtppool")
        self._sender = Sender(self)
        self._trace = options.transaction_log or options.debug
        #: "implicit" or "STARTTLS" once TLS is up, else None.
        self.tls_mode: str | None = None
        #: Why the session went on without TLS although the server offered STARTTLS
        #: (``opportunistic_tls`` only), else None.
        self.tls_fallback: str | None = None
        #: The most recent reply from the server.
        self.last_reply: Reply | None = None
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
        return self._protocol.extensions

    @property
    def state(self) -> State:
        return self._protocol.state

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

    # -- the error boundary ------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Run a public operation: translate errors; close the socket when unsafe to go on."""
        try:
            try:
                yield
            except OSError as exc:
                translate(exc, doing, self.options.host)
        except BaseException as exc:
            if isinstance(exc, _FATAL) or not self._is_clean():
                self.close()
            raise

    def _is_clean(self) -> bool:
        """True when no reply is outstanding and no transaction or exchange is half done."""
        return (
            self._transport.sock is not None
            and self._protocol.pending == 0
            and self._protocol.state in (State.HELLO, State.READY)
        )

    # -- replies -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._transport.write(data)

    def _read_reply(
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
        protocol = self._protocol
        reply = protocol.next_reply()  # pipelined replies often arrived together
        if reply is None:
            transport = self._transport
            if deadline is None:
                deadline = time.monotonic() + self.options.socket_timeout
            while reply is None:
                if protocol.peer_closed:
                    by = "aborted" if transport.aborted else "closed by the server"
                    raise ConnectError(f"connection {by} while {doing}")
                protocol.receive_data(transport.receive(deadline, doing))
                reply = protocol.next_reply()
        self.last_reply = reply
        if self._trace:
            self._log.debug(
                "smtp %s:%s C: %s S: %s", self.options.host, self.options.port, reply.command, reply
            )
        if reply.code == 421 and not closing_ok:
            raise ConnectError.from_reply(reply, "server is closing the session")
        return reply

    def _command(self, data: bytes, doing: str = "waiting for a reply") -> Reply:
        self._write(data)
        return self._read_reply(doing=doing)

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
        with self._guard("connecting"):
            try:
                self._open_session(starttls=not opts.ignore_tls)
            except ssl.SSLError as exc:  # raw handshake errors and our TLSError alike
                # A handshake that failed after STARTTLS was accepted: opportunistic_tls
                # means the caller prefers plaintext to no mail, so dial again without it.
                after_starttls = not opts.secure and self.tls_mode is None
                if not (
                    opts.opportunistic_tls
                    and after_starttls
                    and self._given_sock is None
                    and self._protocol.state == State.HELLO
                ):
                    if after_starttls and not isinstance(exc, TLSError):  # the handshake
                        raise TLSError(
                            f"TLS failure in STARTTLS: {exc} (trust the server's certificate "
                            "with tls={'cafile': ...}, or allow a plaintext retry with "
                            "opportunistic_tls=True)"
                        ) from exc
                    raise
                self.close()
                self._open_session(starttls=False)
                self._fall_back_to_plaintext(f"the TLS handshake failed: {exc}")
        self.connected_at = time.monotonic()
        self._log.info(
            "connected to %s:%s (tls=%s, extensions=%s)",
            opts.host,
            opts.port,
            self.tls_mode or "none",
            ",".join(self.extensions) or "-",
        )

    def _open_session(self, *, starttls: bool) -> None:
        opts = self.options
        self._protocol = SMTPProtocol(lmtp=opts.lmtp)
        self.tls_mode = self.tls_fallback = None
        deadline = time.monotonic() + opts.connection_timeout
        given, self._given_sock = self._given_sock, None  # used once
        self._transport.open(deadline, given)
        if opts.secure:
            self._start_tls(deadline, "implicit")
        greeting = self._read_reply(
            time.monotonic() + opts.greeting_timeout, "waiting for the greeting"
        )
        if greeting.code != 220:
            raise ConnectError.from_reply(greeting, "server refused the session")
        self._hello()
        if starttls and not opts.secure:
            self._starttls()

    def _start_tls(self, deadline: float, mode: str) -> None:
        self._transport.start_tls(deadline)
        self.tls_mode = mode

    def _hello(self) -> None:
        opts = self.options
        name = opts.name or local_fqdn()
        if "." not in name or not name.isascii():
            name = self._transport.address_literal()
        reply = self._command(self._protocol.ehlo(name))
        if not reply.is_positive and not opts.lmtp:
            reply = self._command(self._protocol.helo(name))
        if not reply.is_positive:
            raise ProtocolError.from_reply(reply, "server refused EHLO and HELO")

    def _starttls(self) -> None:
        opts = self.options
        if "STARTTLS" not in self.extensions:
            if opts.require_tls:
                raise TLSError("STARTTLS extension not supported by server. (require_tls is set)")
            return
        reply = self._command(self._protocol.starttls())
        if reply.code != 220:
            if opts.opportunistic_tls:
                self._fall_back_to_plaintext(f"the server refused STARTTLS: {reply}")
                return
            raise TLSError.from_reply(reply, "server refused STARTTLS")
        self._start_tls(time.monotonic() + opts.connection_timeout, "STARTTLS")
        self._hello()

    def _fall_back_to_plaintext(self, reason: str) -> None:
        """Record and log (at WARNING, every time) a session going on without the TLS
        the server offered, as ``opportunistic_tls`` allows."""
        self.tls_fallback = reason
        self._log.warning(
            "%s:%s: continuing WITHOUT TLS (opportunistic_tls): %s",
            self.options.host,
            self.options.port,
            reason,
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
        with self._guard("authenticating"):
            self._require(State.READY)
            plaintext_ok = self.options.allow_plaintext_auth or self._transport.on_loopback()
            if not self.secure and not plaintext_ok:
                raise AuthenticationError(
                    f"refusing to send credentials to {self.options.host} over an unencrypted "
                    "connection; use TLS (secure=True or STARTTLS) or allow_plaintext_auth=True"
                )
            if "AUTH" not in self.extensions:  # smtplib's wording, familiar to its users
                raise AuthenticationError(
                    "SMTP AUTH extension not supported by server."
                    + ("" if self.secure else " (Some servers offer it only after STARTTLS.)")
                )
            method = choose_mechanism(
                self.extensions.auth_mechanisms,
                oauth2=isinstance(credentials, OAuth2),
                forced=self.options.auth_method,
            )
            reply = self._login_with(method, credentials)
            if reply.code != 235:
                raise AuthenticationError.from_reply(reply, f"AUTH {method} failed")
        self._log.info(
            "authenticated to %s as %s with %s", self.options.host, credentials.user, method
        )

    def _login_with(self, method: str, credentials: Credentials | OAuth2) -> Reply:
        if isinstance(credentials, Credentials):
            return self._sasl(method, credentials.user, credentials.password)
        token = credentials.get_token()
        reply = self._sasl(method, credentials.user, token)
        if reply.code != 235 and credentials.can_refresh:  # a revoked token: refresh once
            self._log.info("XOAUTH2 token for %s rejected; refreshing once", credentials.user)
            reply = self._sasl(method, credentials.user, credentials.refresh(rejected=token))
        return reply

    def _sasl(self, method: str, user: str, secret: str) -> Reply:
        mechanism = make_mechanism(method, user, secret)
        reply = self._command(self._protocol.auth(method, mechanism.initial_response()))
        for _ in range(MAX_AUTH_ROUNDS):
            if reply.code != 334:
                return reply
            answer = mechanism.respond(decode_challenge(reply))
            reply = self._command(self._protocol.auth_continue(answer))
        raise ProtocolError(f"AUTH {method}: more than {MAX_AUTH_ROUNDS} challenges")

    def _require(self, state: State) -> None:
        self._transport.connected()
        if self._protocol.state != state or self._protocol.pending:
            raise ConnectError(f"connection is not ready (state {self._protocol.state.name})")

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
        source = self._sender.prepare(message, env)
        with self._guard("sending a message"):
            self._require(State.READY)
            result = self._sender.send(env, source)
        self.messages_sent += 1
        self._log.debug(
            "sent message from <%s> to %d of %d recipient(s): %s",
            env.mail_from,
            len(result.accepted),
            len(env.rcpt_to),
            result.response,
        )
        return result

    # -- pipelining across transactions --------------------------------------------------

    def send_stream(
        self,
        first: tuple[Envelope | Mapping[str, Any], MessageInput],
        more: Callable[[], tuple[Envelope | Mapping[str, Any], MessageInput] | None],
    ) -> Iterator[SendResult | SMTPError]:
        """Send ``first``, then each message ``more()`` returns until it returns None,
        yielding one outcome per message in order.

        On a PIPELINING server using DATA, each message's content and end of data go out
        in the same write as the next message's MAIL, RCPT and DATA (RFC 2920 lets the
        content transfer open a group): one write and one round trip per message.  Other
        servers get one :meth:`send` at a time.  ``more()`` is called only when the next
        message can be sent, and never after an outcome that closed the connection; the
        message announced behind a lost end of data comes back as a ConnectError without
        ``delivery_unknown`` (its data never left), so it may be retried.
        """
        ext = self.extensions
        if "PIPELINING" not in ext or "CHUNKING" in ext or self.options.lmtp:
            item: tuple[Envelope | Mapping[str, Any], MessageInput] | None = first
            while item is not None:
                try:
                    yield self.send(*item)
                except SMTPError as exc:
                    yield exc
                    if not self.is_connected:
                        return
                item = more()
            return
        yield from self._pipeline(first, more)

    def _pipeline(
        self,
        first: tuple[Envelope | Mapping[str, Any], MessageInput],
        more: Callable[[], tuple[Envelope | Mapping[str, Any], MessageInput] | None],
    ) -> Iterator[SendResult | SMTPError]:
        refused: list[SMTPError] = []  # refused by checks that need no reply

        def prepare(
            item: tuple[Any, MessageInput] | None,
        ) -> tuple[Envelope, MessageSource, bytes] | None:
            while item is not None:
                try:
                    return self._sender.prepare_commands(item)
                except (EnvelopeError, MessageError) as exc:
                    refused.append(exc)
                    item = more()
            return None

        with self._guard("sending messages"):
            self._require(State.READY)
            current = prepare(first)
            if current is not None:
                self._write(current[2])
        following: list[tuple[Envelope, MessageSource, bytes]] = []  # announced behind this one

        def next_commands() -> bytes:
            prepared = prepare(more())
            if prepared is None:
                return b""
            following.append(prepared)
            return prepared[2]

        while True:
            yield from refused
            refused.clear()
            if current is None:
                return
            env, source, _ = current
            following.clear()

            try:
                result = self._sender.send_pipelined(env, source, next_commands)
            except SMTPError as exc:
                if isinstance(exc, _FATAL):
                    self.close()
                yield exc
                if not self.is_connected:
                    yield from refused
                    if following:  # its commands went out, its data never did
                        yield ConnectError("connection lost before this message was sent")
                    return
                if following:  # refused at the end of data: the next one is under way
                    current = following[0]
                    continue
                with self._guard("sending messages"):  # refused before its data
                    current = prepare(more())
                    if current is not None:
                        self._write(current[2])
                continue
            except BaseException:
                self.close()
                raise
            self.messages_sent += 1
            yield result
            current = following[0] if following else None

    # -- reuse ---------------------------------------------------------------------------

    def is_within_limits(self) -> bool:
        """The cheap half of :meth:`is_reusable`: idle and clean, and below
        ``max_messages`` and ``connection_ttl``; the socket is not examined."""
        if not self._is_clean() or self._protocol.state != State.READY:
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
        with self._guard("resetting"):
            return self._sender.expect_positive(self._protocol.rset(), "RSET")

    def noop(self) -> Reply:
        """NOOP: check that the server still answers."""
        with self._guard("sending NOOP"):
            return self._sender.expect_positive(self._protocol.noop(), "NOOP")

    def quit(self) -> None:
        """Say goodbye and close; a server that just hangs up (even mid-TLS) is fine too."""
        quit_all([self])

    def _send_quit(self) -> float | None:
        """The first half of :func:`quit_all`: write QUIT and return the deadline for its
        reply; None (and the socket closed) when there is no session to say goodbye to."""
        if self._transport.sock is None:
            return None
        try:
            with self._guard("quitting"):
                if self._protocol.state in (State.CLOSED, State.FAILED) or self._protocol.pending:
                    self.close()
                    return None
                self._write(self._protocol.quit())
                return time.monotonic() + min(self.options.socket_timeout, QUIT_TIMEOUT)
        except (ConnectError, TLSError, SMTPTimeoutError) as exc:
            self._log.debug("ignoring %s while quitting %s", exc.code, self.options.host)
            self.close()
            return None

    def _await_quit_reply(self, deadline: float) -> None:
        """The second half of :func:`quit_all`: wait for the reply to QUIT, then close."""
        try:
            with self._guard("quitting"):
                self._read_reply(deadline, "quitting", closing_ok=True)
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
