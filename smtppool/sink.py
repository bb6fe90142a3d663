"""A local SMTP/LMTP sink for development, demos and tests (the ``sink`` extra).

:class:`Sink` runs an ``aiosmtpd`` server on its own event-loop thread on a loopback
port (port 0 picks a free one) and records every message it accepts.  Beyond what
aiosmtpd does it can advertise and honour PIPELINING, DSN and CHUNKING (BDAT), check
CRAM-MD5 and XOAUTH2 logins (over plaintext too: it is a development server on
loopback), and refuse chosen recipients, so clients can be exercised against a real
server.  Its memory stays bounded: a BDAT chunk over the size limit is read and dropped
in small pieces, connections are capped, and ``keep_messages=False`` keeps nothing once
``on_message`` has it.  aiosmtpd is imported only when a sink is made.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import inspect
import json
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .envelope import Envelope

__all__ = ["ReceivedMessage", "Sink"]

_DSN_PARAMS = ("RET", "ENVID", "NOTIFY", "ORCPT")
#: A BDAT chunk size: ASCII digits, few enough for int().
_CHUNK_SIZE = re.compile(r"[0-9]{1,18}")
#: Bytes of a refused BDAT chunk read (and dropped) at a time.
_DISCARD_PIECE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  #: content after un-stuffing, CRLF line endings
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    connection: int  #: which connection carried it, numbered from 1 in accept order
    received_at: float  #: ``time.monotonic()`` when its MAIL FROM arrived
    login: str | None  #: the authenticated user, if any
    transfer: str  #: "DATA" or "BDAT"

    @property
    def envelope(self) -> Envelope:
        """``mail_from`` and ``rcpt_tos`` as an :class:`~smtppool.Envelope`, as the
        pytest plugin's messages have it."""
        return Envelope(self.mail_from, self.rcpt_tos)


class Sink:
    """A recording mail server on loopback, run from a background thread.

    :param tls_context: offer STARTTLS with this server context.
    :param ssl_context: speak implicit TLS (SMTPS) with this server context.
    :param credentials: ``{user: password}`` accepted by PLAIN, LOGIN and CRAM-MD5.
    :param tokens: ``{user: access_token}`` accepted by XOAUTH2.
    :param extensions: extra keywords to advertise and honour: PIPELINING, DSN, CHUNKING.
    :param reject_recipients: addresses refused at RCPT with ``550 5.1.1``.
    :param on_message: called (on the sink's thread) with each ReceivedMessage.
    :param keep_messages: keep each message in :attr:`messages` (False: only
        ``on_message`` sees it, so a long run's memory stays flat).
    :param max_connections: sessions served at once; the next is greeted with 421.
    :param smtp_options: passed on to :class:`aiosmtpd.smtp.SMTP` (``data_size_limit``,
        ``auth_require_tls`` (here True only with ``tls_context``), ``timeout`` ...); an
        unknown name is a ``TypeError``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        ssl_context: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] | None = None,
        lmtp: bool = False,
        extensions: Collection[str] = (),
        reject_recipients: Collection[str] = (),
        on_message: Callable[[ReceivedMessage], object] | None = None,
        keep_messages: bool = True,
        max_connections: int = 100,
        **smtp_options: Any,
    ) -> None:
        unknown_options = set(smtp_options) - _smtp_option_names()
        if unknown_options:
            raise TypeError(
                f"unknown Sink option(s) {sorted(unknown_options)}; TLS is tls_context= "
                "(STARTTLS) or ssl_context= (implicit TLS), an ssl.SSLContext"
            )
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.ssl_context = ssl_context
        self.credentials = dict(credentials or {})
        self.tokens = dict(tokens or {})
        self.lmtp = lmtp
        self.extensions = frozenset(e.upper() for e in extensions)
        unknown = self.extensions - {"PIPELINING", "DSN", "CHUNKING"}
        if unknown:
            raise ValueError(f"the sink cannot honour {sorted(unknown)}")
        self.reject_recipients = frozenset(reject_recipients)
        self.on_message = on_message
        self.keep_messages = keep_messages
        self.max_connections = max_connections
        self.smtp_options = smtp_options
        #: Connections greeted with 421 because ``max_connections`` were open.
        self.connections_refused = 0
        self.messages: list[ReceivedMessage] = []
        #: (mechanism, user, succeeded) for every AUTH attempt.
        self.login_attempts: list[tuple[str, str, bool]] = []
        self.connections_opened = 0
        self.max_concurrent = 0
        self._active: set[Any] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Sink {self.host}:{self.port} messages={len(self.messages)}>"

    @property
    def url(self) -> str:
        scheme = "lmtp" if self.lmtp else "smtps" if self.ssl_context else "smtp"
        return f"{scheme}://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Sink:
        """Bind, start serving on a background thread, and return self."""
        if self._thread is not None:
            raise RuntimeError("sink already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and
        # without it Nagle holds each pipelined reply for the client's delayed ACK (40 ms).
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._make_server, sock=listener, ssl=self.ssl_context)
            )
        except BaseException:
            loop.close()
            listener.close()
            raise
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="smtppool-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server and every open session; wait at most ``timeout`` seconds."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            # Stop accepting, but let connections already accepted become transports
            # before the server closes: each does so in a task of its own, which, run
            # after close() or cancelled before it runs, leaves its socket open.
            for listener in self._server.sockets:
                loop.remove_reader(listener.fileno())
            await _turns(3)
            self._server.close()
            await self._drop()
            deadline = loop.time() + timeout / 2
            while self._active and loop.time() < deadline:
                await asyncio.sleep(0.01)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _turns(3)  # transports closed by the cancellations close their sockets
            await self._drop()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- bookkeeping ---------------------------------------------------------------------

    def _make_server(self) -> Any:
        return _server_class(self.lmtp)(self)

    def _opened(self, protocol: Any) -> int:
        """Number a new session; 0 when ``max_connections`` are open already."""
        with self._lock:
            if len(self._active) >= self.max_connections:
                self.connections_refused += 1
                return 0
            self.connections_opened += 1
            self._active.add(protocol)
            self.max_concurrent = max(self.max_concurrent, len(self._active))
            return self.connections_opened

    def _closed(self, protocol: Any) -> None:
        with self._lock:
            self._active.discard(protocol)

    def drop_connections(self, timeout: float = 5.0) -> int:
        """Cut every open session without a word, as a server restart or an idle timeout
        would; return how many were dropped."""
        if self._loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(timeout)

    async def _drop(self) -> int:
        sessions = list(self._active)
        for protocol in sessions:
            if protocol.transport is not None:
                protocol.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run
        return len(sessions)

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._active)

    def _record(self, message: ReceivedMessage) -> None:
        if self.keep_messages:
            with self._lock:
                self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def check_password(self, user: str, password: str) -> bool:
        expected = self.credentials.get(user)
        return expected is not None and hmac.compare_digest(expected, password)

    def check_cram_md5(self, user: str, challenge: bytes, digest: str) -> bool:
        expected = self.credentials.get(user)
        if expected is None:
            return False
        good = hmac.new(expected.encode(), challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(good, digest)

    def check_token(self, user: str, token: str) -> bool:
        expected = self.tokens.get(user)
        return expected is not None and hmac.compare_digest(expected, token)

    # -- aiosmtpd handler hooks ----------------------------------------------------------

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        extra = [f"250-{keyword}" for keyword in sorted(self.extensions)]
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.mail_at = time.monotonic()
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.reject_recipients:
            return f"550 5.1.1 <{address}>: recipient unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._record(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                mail_options=tuple(envelope.mail_options),
                rcpt_options=tuple(envelope.rcpt_options),
                connection=server.sink_connection,
                received_at=getattr(envelope, "mail_at", time.monotonic()),
                login=getattr(session, "auth_data", None),
                transfer="BDAT" if getattr(envelope, "bdat", None) is not None else "DATA",
            )
        )
        queue_id = secrets.token_hex(5).upper()
        if self.lmtp:
            return "\r\n".join(
                f"250 2.0.0 <{rcpt}> delivered as {queue_id}" for rcpt in envelope.rcpt_tos
            )
        return f"250 2.0.0 OK: queued as {queue_id}"

    @staticmethod
    def xoauth2_error() -> str:
        """The JSON challenge Gmail sends for a refused token."""
        return json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail"})


async def _turns(count: int) -> None:
    """Let the event loop run ``count`` rounds of ready callbacks."""
    for _ in range(count):
        await asyncio.sleep(0)


def _aiosmtpd() -> Any:
    """The aiosmtpd.smtp module, imported only now, so the extra stays optional."""
    try:
        import aiosmtpd.smtp
    except ImportError as exc:
        raise ImportError("the sink needs aiosmtpd: pip install 'smtppool[sink]'") from exc
    return aiosmtpd.smtp


@functools.lru_cache(maxsize=1)
def _smtp_option_names() -> frozenset[str]:
    """What :class:`aiosmtpd.smtp.SMTP` takes, less what the sink sets itself."""
    names = set(inspect.signature(_aiosmtpd().SMTP.__init__).parameters)
    return frozenset(names - {"self", "handler", "loop", "tls_context", "authenticator"})


@functools.lru_cache(maxsize=2)
def _server_class(lmtp: bool) -> Any:
    """Build the aiosmtpd server class."""
    _aiosmtpd()  # installed, or a clear ImportError
    from aiosmtpd.lmtp import LMTP
    from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session

    class SinkSession(Session):
        """aiosmtpd's session without its deprecation warning: aiosmtpd itself sets
        ``login_data`` after every successful login."""

        login_data = None

    class SinkServer(LMTP if lmtp else SMTP):  # type: ignore[misc]
        def __init__(self, sink: Sink) -> None:
            self.sink = sink
            options: dict[str, Any] = {
                "hostname": "sink.localhost",
                "enable_SMTPUTF8": True,
                "tls_context": sink.tls_context,
                "authenticator": self._check_login,
                # A development server takes logins over plaintext, unless it offers
                # STARTTLS: then, as a real server would, only after it.
                "auth_require_tls": sink.tls_context is not None,
            }
            excluded = set()
            if not sink.credentials:
                excluded |= {"PLAIN", "LOGIN", "CRAM-MD5"}
            if not sink.tokens:
                excluded.add("XOAUTH2")
            options["auth_exclude_mechanism"] = excluded
            options.update(sink.smtp_options)
            super().__init__(sink, loop=asyncio.get_running_loop(), **options)
            self.sink_connection = 0

        def connection_made(self, transport: Any) -> None:
            if not self.sink_connection:
                self.sink_connection = self.sink._opened(self)
                if not self.sink_connection:  # max_connections are open
                    transport.write(b"421 4.7.0 sink.localhost too many connections\r\n")
                    transport.close()
                    return
            super().connection_made(transport)

        def _create_session(self) -> Any:
            return SinkSession(self.loop)

        def connection_lost(self, error: Exception | None) -> None:
            if not self.sink_connection:  # refused: no session was started
                return
            self.sink._closed(self)
            super().connection_lost(error)

        def _check_login(
            self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = isinstance(data, LoginPassword) and self.sink.check_password(
                data.login.decode(), data.password.decode()
            )
            user = data.login.decode() if isinstance(data, LoginPassword) else "?"
            self.sink.login_attempts.append((mechanism, user, ok))
            return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

        def _getparams(self, params: Any) -> Any:
            found = super()._getparams(params)
            if found is not None and "DSN" in self.sink.extensions:
                for name in _DSN_PARAMS:
                    found.pop(name, None)
            return found

        async def auth_CRAM__MD5(self, _: Any, args: list[str]) -> Any:
            challenge = f"<{secrets.token_hex(8)}@sink.localhost>".encode()
            answer = await self.challenge_auth(challenge)
            if answer is MISSING:
                return AuthResult(success=False)
            user, _, digest = answer.decode(errors="replace").rpartition(" ")
            ok = self.sink.check_cram_md5(user, challenge, digest)
            self.sink.login_attempts.append(("CRAM-MD5", user, ok))
            return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

        async def auth_XOAUTH2(self, _: Any, args: list[str]) -> Any:
            blob = await self._decode_initial(args)
            if blob is MISSING:
                return AuthResult(success=False)
            fields = dict(
                part.split("=", 1)
                for part in blob.decode(errors="replace").split("\x01")
                if "=" in part
            )
            user, bearer = fields.get("user", "?"), fields.get("auth", "")
            ok = bearer.startswith("Bearer ") and self.sink.check_token(user, bearer[7:])
            self.sink.login_attempts.append(("XOAUTH2", user, ok))
            if not ok:  # Gmail's dance: a JSON challenge, an empty answer, then 535
                await self.challenge_auth(self.sink.xoauth2_error())
            return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

        async def _decode_initial(self, args: list[str]) -> Any:
            if len(args) > 1:
                return await self._decode_b64(args[1])
            return await self.challenge_auth("")

        async def _decode_b64(self, text: str) -> Any:
            try:
                return base64.b64decode(text, validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Can't decode base64")
                return MISSING

        async def smtp_BDAT(self, arg: str) -> None:
            """RFC 3030 CHUNKING: ``BDAT size [LAST]`` followed by exactly size octets."""
            if "CHUNKING" not in self.sink.extensions:
                await self.push('500 Error: command "BDAT" not recognized')
                return
            if await self.check_helo_needed():
                return
            words = (arg or "").split()
            if (
                not words
                or not _CHUNK_SIZE.fullmatch(words[0])
                or len(words) > 2
                or (len(words) == 2 and words[1].upper() != "LAST")
            ):
                await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
                return
            size, envelope = int(words[0]), self.envelope
            received = len(getattr(envelope, "bdat", None) or b"")
            limit = self.data_size_limit
            # Refused chunks are read and dropped piece by piece: never held in memory.
            if not envelope.rcpt_tos:
                await self._discard(size)
                await self.push("503 5.5.1 Error: need RCPT command")
                return
            if limit and received + size > limit:
                await self._discard(size)
                await self.push("552 5.3.4 Error: too much mail data")
                self._set_post_data_state()
                return
            chunk = await self._reader.readexactly(size)
            if getattr(envelope, "bdat", None) is None:
                envelope.bdat = bytearray()
            envelope.bdat += chunk
            if len(words) == 1:
                await self.push(f"250 2.0.0 {len(chunk)} octets received")
                return
            envelope.original_content = envelope.content = bytes(envelope.bdat)
            status = await self._call_handler_hook("DATA")
            await self.push("250 OK" if status is MISSING else status)
            self._set_post_data_state()

        async def _discard(self, size: int) -> None:
            while size > 0:
                piece = await self._reader.readexactly(min(size, _DISCARD_PIECE))
                size -= len(piece)

    return SinkServer
