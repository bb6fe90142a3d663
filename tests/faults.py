"""FaultServer: an SMTP server on loopback that pushes back the way real providers do.

It caps concurrent sessions (greeting the rest with ``421 4.7.0 too many connections``,
or hanging up before the greeting), refuses a share of connections at the greeting, cuts
a share of transactions at a stage drawn at random (before the greeting, after EHLO,
MAIL, RCPT or DATA, in the middle of the content, or after the final dot before the
reply), and can answer slowly or stall after each message.  Every random choice comes
from a generator seeded with ``seed`` and the connection's number, so the faults a given
connection meets replay from run to run.

It records what a delivery test needs to judge the client: each message whose final
dot arrived (answered or not), how many sessions were open at once, and every refusal.
A thread per connection; used by the tests and by ``python -m benchmarks pushback``.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["STAGES", "FaultServer", "Faults", "Received"]

#: Where a transaction can be cut: "greeting" hangs up on a new connection before it is
#: greeted; the others hang up after the named command (or, for "content", part-way
#: through the message, and for "dot", after the final dot) without replying.
STAGES = ("greeting", "ehlo", "mail", "rcpt", "data", "content", "dot")
#: The stages every transaction passes (the first two happen once per connection).
TRANSACTION_STAGES = STAGES[2:]
#: Longest command line or content line accepted before the connection is dropped.
LINE_LIMIT = 65536
#: Seconds a connection may sit silent before the server hangs up.
IDLE_LIMIT = 60.0


@dataclass(frozen=True)
class Faults:
    """What the server does wrong, and how often."""

    #: Sessions served at once; a connection beyond them gets ``cap_reply``.
    cap: int | None = None
    #: The reply to a connection over the cap, or None to hang up before the greeting.
    cap_reply: bytes | None = b"421 4.7.0 Error: too many connections from 127.0.0.1"
    #: Share of connections answered with ``refuse_reply`` instead of the greeting.
    refuse: float = 0.0
    refuse_reply: bytes = b"421 4.7.0 Try again later, closing connection"
    #: Connections (numbered from 1 in the order accepted) refused with ``refuse_reply``
    #: whatever ``refuse`` draws: a refusal at a known moment.
    refuse_connections: frozenset[int] = frozenset()
    #: Share of transactions cut at a stage drawn from ``drop_stages``.
    drop: float = 0.0
    drop_stages: tuple[str, ...] = STAGES
    #: Seconds before every reply.
    delay: float = 0.0
    #: Seconds between a message's final dot and its reply.
    stall: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.drop_stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown drop stages {sorted(unknown)}; known: {STAGES}")


@dataclass(frozen=True)
class Received:
    """A message whose final dot reached the server."""

    connection: int
    message_id: str | None
    data: bytes
    #: True when the server said 250 for it; False when it hung up instead.
    answered: bool


class _Cut(Exception):
    """This connection's fault: hang up now."""


class _Ended(Exception):
    """The client said QUIT: the session was counted out already."""


@dataclass
class _Session:
    number: int
    sock: socket.socket
    rng: random.Random
    buffer: bytearray = field(default_factory=bytearray)
    cut_at: str | None = None  # the stage at which this transaction will be cut

    def read_line(self) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > LINE_LIMIT:
                raise _Cut("line too long")
            data = self.sock.recv(65536)
            if not data:
                raise _Cut("client hung up")
            self.buffer += data
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line


class FaultServer:
    """Serves on a free port of ``host`` until :meth:`stop`; see :class:`Faults`."""

    def __init__(self, faults: Faults | None = None, host: str = "127.0.0.1") -> None:
        self.faults = faults or Faults()
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self.received: list[Received] = []
        #: Connections accepted, sessions greeted with 220, connections refused (cap or
        #: refuse), connections whose transaction was cut.
        self.connections = self.sessions = self.refused = self.cut = 0
        #: Most sessions (greeted connections) open at once.
        self.peak_sessions = 0
        self._open_connections = self._open_sessions = 0
        self._acceptor = threading.Thread(target=self._accept, name="fault-server", daemon=True)

    def start(self) -> FaultServer:
        self._acceptor.start()
        return self

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what a test reads -----------------------------------------------------------------

    def message_counts(self) -> dict[str | None, int]:
        """How many times each Message-ID arrived (its final dot, answered or not)."""
        counts: dict[str | None, int] = {}
        with self._lock:
            for message in self.received:
                counts[message.message_id] = counts.get(message.message_id, 0) + 1
        return counts

    @property
    def open_sessions(self) -> int:
        with self._lock:
            return self._open_sessions

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # stop() closed the listener
            number += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(IDLE_LIMIT)
            with self._lock:
                if self._stopped.is_set():
                    sock.close()
                    return
                self._sockets.add(sock)
                self._open_connections += 1
                self.connections += 1
            rng = random.Random(f"{self.faults.seed}/{number}")
            thread = threading.Thread(
                target=self._serve,
                args=(_Session(number, sock, rng),),
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, session: _Session) -> None:
        try:
            if self._admit(session):
                try:
                    self._plan_cut(session, STAGES)
                    self._cut_if(session, "greeting")
                    self._reply(session, b"220 faults.example ESMTP")
                    self._converse(session)
                except _Ended:
                    return
                except BaseException:
                    self._end_session()
                    raise
        except (_Cut, OSError):
            pass
        finally:
            with self._lock:
                self._sockets.discard(session.sock)
                self._open_connections -= 1
            session.sock.close()

    def _end_session(self) -> None:
        with self._lock:
            self._open_sessions -= 1

    def _admit(self, session: _Session) -> bool:
        """Count a new session, or refuse the connection; True when the session is open."""
        faults = self.faults
        refusal: bytes | None = None
        with self._lock:
            over_cap = faults.cap is not None and self._open_sessions >= faults.cap
            refused = session.number in faults.refuse_connections
            if over_cap or refused or session.rng.random() < faults.refuse:
                self.refused += 1
                refusal = faults.cap_reply if over_cap else faults.refuse_reply
            else:
                self._open_sessions += 1
                self.sessions += 1
                self.peak_sessions = max(self.peak_sessions, self._open_sessions)
        if over_cap and refusal is None:
            return False  # hang up without a word
        if refusal is not None:
            self._reply(session, refusal)
            return False
        return True

    def _plan_cut(self, session: _Session, stages: tuple[str, ...]) -> None:
        """Draw whether (and where) the coming transaction is cut."""
        faults = self.faults
        possible = [stage for stage in faults.drop_stages if stage in stages]
        cut = possible and session.rng.random() < faults.drop
        session.cut_at = session.rng.choice(possible) if cut else None

    def _cut_if(self, session: _Session, stage: str) -> None:
        if session.cut_at == stage:
            with self._lock:
                self.cut += 1
            raise _Cut(stage)

    def _reply(self, session: _Session, line: bytes) -> None:
        if self.faults.delay:
            self._stopped.wait(self.faults.delay)
        session.sock.sendall(line + b"\r\n")

    def _converse(self, session: _Session) -> None:
        in_mail = False
        while True:
            line = session.read_line()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO", b"LHLO"):
                self._cut_if(session, "ehlo")
                self._reply(session, b"250-faults.example\r\n250-PIPELINING\r\n250 8BITMIME")
            elif verb == b"MAIL":
                self._cut_if(session, "mail")
                in_mail = True
                self._reply(session, b"250 2.1.0 Ok")
            elif verb == b"RCPT":
                self._cut_if(session, "rcpt")
                self._reply(session, b"250 2.1.5 Ok" if in_mail else b"503 5.5.1 MAIL first")
            elif verb == b"DATA":
                self._cut_if(session, "data")
                if not in_mail:
                    self._reply(session, b"503 5.5.1 MAIL first")
                    continue
                self._reply(session, b"354 End data with <CR><LF>.<CR><LF>")
                self._receive(session)
                in_mail = False
                self._plan_cut(session, TRANSACTION_STAGES)  # the next one draws its own
            elif verb == b"RSET":
                in_mail = False
                self._reply(session, b"250 2.0.0 Ok")
            elif verb == b"NOOP":
                self._reply(session, b"250 2.0.0 Ok")
            elif verb == b"QUIT":  # the session ends here, as a server counts it
                self._end_session()
                self._reply(session, b"221 2.0.0 Bye")
                raise _Ended
            else:
                self._reply(session, b"502 5.5.2 Command not recognised")

    def _receive(self, session: _Session) -> None:
        lines: list[bytes] = []
        while (line := session.read_line()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)
            if len(lines) == 2:
                self._cut_if(session, "content")
        data = b"".join(lines)
        message_id = None
        for header in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if header.lower().startswith(b"message-id:"):
                message_id = header.split(b":", 1)[1].strip().decode("ascii", "replace")
        cut = session.cut_at == "dot"
        with self._lock:
            self.received.append(Received(session.number, message_id, data, not cut))
        self._cut_if(session, "dot")
        if self.faults.stall:
            self._stopped.wait(self.faults.stall)
        self._reply(session, b"250 2.0.0 Ok: queued")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, hang up on every connection, and wait for the threads."""
        with self._lock:
            self._stopped.set()
            sockets = list(self._sockets)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        except OSError:
            pass
        self._listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        self._acceptor.join(timeout)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.01))
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"{len(alive)} fault-server connection thread(s) did not end"
