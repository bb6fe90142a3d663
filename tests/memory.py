"""MemoryServer: an SMTP server in memory, for tests that are not about timing.

A connection is a :class:`MemorySocket` (given to ``SMTPConnection(sock=...)``, or
handed out by ``SMTPPool(get_socket=server.connect)``): every byte the client writes
goes straight to the server's Python code, which answers at once into the socket's
read queue.  Nothing goes through the kernel or waits: no listening socket, no server
thread, no sleep, so a test runs in microseconds and a client that would block on a
reply the server never sends fails at once with a timeout instead of hanging.  (A
socketpair underneath gives the stand-in a file descriptor, only so that the client's
idle check can ``select()`` on it; no byte travels through it.)

The server is a small sink: EHLO (with the extensions given), MAIL (refusing the
senders given), RCPT (refusing the addresses given), DATA with dot-unstuffing (refused
at its end when asked), BDAT (CHUNKING; a refused transaction stays open until RSET, the
strictest reading of RFC 3030), RSET, NOOP, QUIT; :meth:`MemoryServer.hang_up` closes
every connection as a server's idle timeout would, and ``drop_after=n`` makes each
connection go silent after its n-th reply and hang up: the commands it has read are
still carried out (a message may be delivered without its reply ever leaving), and
later writes fail as on a reset connection.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    connection: int


@dataclass
class _Session:
    number: int
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    content: list[bytes] | None = None  # collecting DATA
    chunks: list[bytes] | None = None  # collecting BDAT chunks
    bdat_left: int = 0  # bytes of the current chunk still to come
    bdat_last: bool = False
    bdat_failed: bool = False  # the chunk in progress is refused when complete
    replies: int = 0


class MemorySocket(socket.socket):
    """The client's end of one in-memory connection (see the module's docstring)."""

    def __init__(self, server: MemoryServer, number: int) -> None:
        ours, self._peer = socket.socketpair()
        super().__init__(ours.family, ours.type, ours.proto, fileno=ours.detach())
        self._server = server
        self._session = _Session(number)
        self._incoming: deque[bytes] = deque([b"220 memory ESMTP\r\n"])
        self._pending = b""  # a partial command line
        self.closed_by_server = False
        self.broken = False  # the server reset the connection: writes fail
        self.written: list[bytes] = []  # each write, as the client made it
        #: Each write ("C", data) and each reply read ("S", data), in the client's order.
        self.transcript: list[tuple[str, bytes]] = []

    # -- what the client calls --------------------------------------------------------

    def send(self, data: Any, flags: int = 0) -> int:
        data = bytes(data)
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.written.append(data)
        self.transcript.append(("C", data))
        if not self.closed_by_server:
            self._server.feed(self, data)
        return len(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.send(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._incoming:
            reply = self._incoming.popleft()
            self.transcript.append(("S", reply))
            return reply
        if self.closed_by_server:
            return b""
        raise TimeoutError("the in-memory server owes no reply: the client would wait forever")

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 25)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 49152)

    def close(self) -> None:
        self._peer.close()
        super().close()

    # -- what the server does ---------------------------------------------------------

    def reply(self, data: bytes) -> None:
        session, limit = self._session, self._server.drop_after
        if limit is not None and session.replies >= limit:
            self.closed_by_server = self.broken = True
            return
        session.replies += 1
        self._incoming.append(data)

    def hang_up(self) -> None:
        """Close from the server's side: the client reads EOF, and an idle check sees it."""
        self.closed_by_server = True
        self._peer.send(b"x")  # readable for select(); recv() gives b"" all the same


class MemoryServer:
    """A sink in memory: see the module's docstring."""

    def __init__(
        self,
        *,
        extensions: Iterable[str] = ("PIPELINING", "8BITMIME"),
        refuse: Iterable[str] = (),
        refuse_senders: Iterable[str] = (),
        refuse_data: bool = False,
        drop_after: int | None = None,
    ) -> None:
        self.extensions = list(extensions)
        self.refuse = set(refuse)
        self.refuse_senders = set(refuse_senders)
        self.refuse_data = refuse_data  # 554 at every end of data
        self.drop_after = drop_after  # replies per connection before it goes dead
        self.messages: list[Received] = []
        self.connections: list[MemorySocket] = []
        self._lock = threading.Lock()

    def connect(self, options: object = None) -> MemorySocket:
        """A new connection (the signature of the ``get_socket`` option, which a pool
        calls from several threads)."""
        with self._lock:
            sock = MemorySocket(self, len(self.connections) + 1)
            self.connections.append(sock)
        return sock

    def hang_up(self) -> None:
        for sock in self.connections:
            sock.hang_up()

    def feed(self, sock: MemorySocket, data: bytes) -> None:
        data, session = sock._pending + data, sock._session
        while data:
            if session.bdat_left:
                chunk, data = data[: session.bdat_left], data[session.bdat_left :]
                session.bdat_left -= len(chunk)
                if session.chunks is not None:
                    session.chunks.append(chunk)
                if not session.bdat_left:
                    self._chunk_done(sock, session)
                continue
            line, crlf, rest = data.partition(b"\r\n")
            if not crlf:
                break
            data = rest
            self._line(sock, session, line)
        sock._pending = data

    def _bdat(self, sock: MemorySocket, session: _Session, rest: str) -> None:
        size, _, last = rest.partition(" ")
        session.bdat_left, session.bdat_last = int(size), last.upper() == "LAST"
        session.bdat_failed = session.mail_from is None or not session.rcpt_to
        if session.chunks is None:
            session.chunks = []
        if not session.bdat_left:
            self._chunk_done(sock, session)

    def _chunk_done(self, sock: MemorySocket, session: _Session) -> None:
        if session.bdat_failed:  # the transaction stays open: only RSET ends it
            session.chunks = None
            sock.reply(b"503 5.5.1 no valid recipients\r\n")
        elif session.bdat_last and self.refuse_data:
            session.chunks = None
            sock.reply(b"554 5.7.1 message refused\r\n")
        elif session.bdat_last:
            assert session.chunks is not None
            self._deliver(session, b"".join(session.chunks))
            session.chunks = None
            sock.reply(b"250 2.0.0 queued\r\n")
        else:
            sock.reply(b"250 2.0.0 chunk ok\r\n")

    def _line(self, sock: MemorySocket, session: _Session, line: bytes) -> None:
        if session.content is not None:  # inside DATA
            if line == b"." and self.refuse_data:
                session.content, session.mail_from, session.rcpt_to = None, None, []
                sock.reply(b"554 5.7.1 message refused\r\n")
            elif line == b".":
                self._deliver(session, b"".join(session.content))
                session.content = None
                sock.reply(b"250 2.0.0 queued\r\n")
            else:
                session.content.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            return
        verb, _, rest = line.decode("utf-8", "replace").partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "LHLO"):
            keywords = ["memory", *self.extensions]
            lines = [f"250-{k}" for k in keywords[:-1]] + [f"250 {keywords[-1]}"]
            sock.reply(("\r\n".join(lines) + "\r\n").encode())
        elif verb == "MAIL":
            if session.mail_from is not None:
                sock.reply(b"503 5.5.1 nested MAIL command\r\n")
            elif _address(rest) in self.refuse_senders:
                sock.reply(b"553 5.7.1 sender refused\r\n")
            else:
                session.mail_from, session.rcpt_to = _address(rest), []
                sock.reply(b"250 2.1.0 ok\r\n")
        elif verb == "BDAT":
            self._bdat(sock, session, rest)
        elif verb == "RCPT":
            address = _address(rest)
            if session.mail_from is None:
                sock.reply(b"503 5.5.1 need MAIL\r\n")
            elif address in self.refuse:
                sock.reply(b"550 5.1.1 no such user\r\n")
            else:
                session.rcpt_to.append(address)
                sock.reply(b"250 2.1.5 ok\r\n")
        elif verb == "DATA":
            if session.mail_from is None or not session.rcpt_to:
                sock.reply(b"503 5.5.1 no valid recipients\r\n")
            else:
                session.content = []
                sock.reply(b"354 go ahead\r\n")
        elif verb in ("RSET", "NOOP"):
            if verb == "RSET":
                session.mail_from, session.rcpt_to, session.chunks = None, [], None
            sock.reply(b"250 ok\r\n")
        elif verb == "QUIT":
            sock.reply(b"221 bye\r\n")
            sock.closed_by_server = True
        else:
            sock.reply(b"502 5.5.2 not implemented\r\n")

    def _deliver(self, session: _Session, data: bytes) -> None:
        assert session.mail_from is not None
        self.messages.append(Received(session.mail_from, session.rcpt_to, data, session.number))
        session.mail_from, session.rcpt_to = None, []


def _address(rest: str) -> str:
    """The address between the brackets of ``FROM:<a@x.org> SIZE=1``."""
    return rest[rest.index("<") + 1 : rest.index(">")]
