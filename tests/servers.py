"""ScriptedServer: a socket-level fake SMTP server that plays a script on loopback.

Each accepted connection plays one script: a list of steps built by the helpers below
(``send``, ``expect``, ``expect_data``, ``sleep``, ``drip``, ``starttls``, ...).  Every
read has its own timeout; every byte received is recorded; an exception in the server
thread is re-raised in the test by :meth:`ScriptedServer.stop`.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smtppool import SMTPConnection

STEP_TIMEOUT = 10.0


def wait_until(
    condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.01
) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@dataclass
class Peer:
    """The server's side of one connection, with a read buffer."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    buffer: bytearray = field(default_factory=bytearray)

    def read_until(self, marker: bytes, timeout: float = STEP_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        scanned = 0  # search only the new bytes (plus an overlap): linear on long data
        while (found := self.buffer.find(marker, scanned)) < 0:
            scanned = max(len(self.buffer) - len(marker) + 1, 0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server: no {marker!r} within {timeout}s: {self.buffer!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"server: client closed while waiting for {marker!r}")
            self.received += data
            self.buffer += data
        end = found + len(marker)
        chunk = bytes(self.buffer[:end])
        del self.buffer[:end]
        return chunk


Step = Callable[[Peer], None]


def send(data: bytes) -> Step:
    def step(peer: Peer) -> None:
        peer.sock.sendall(data)

    return step


def expect(prefix: bytes) -> Step:
    """Read one command line and check it starts with ``prefix`` (case-insensitive)."""

    def step(peer: Peer) -> None:
        line = peer.read_until(b"\r\n")
        assert line.upper().startswith(prefix.upper()), f"server expected {prefix!r}, got {line!r}"

    return step


def expect_data() -> Step:
    """Read message content up to and including the end-of-data line."""

    def step(peer: Peer) -> None:
        peer.read_until(b"\r\n.\r\n")

    return step


def expect_eof(timeout: float = STEP_TIMEOUT) -> Step:
    def step(peer: Peer) -> None:
        peer.sock.settimeout(timeout)
        while True:
            data = peer.sock.recv(65536)
            if not data:
                return
            peer.received += data

    return step


def sleep(seconds: float) -> Step:
    return lambda peer: time.sleep(seconds)


def drip(data: bytes, interval: float) -> Step:
    """Send one byte at a time, ``interval`` seconds apart (stops if the client leaves)."""

    def step(peer: Peer) -> None:
        for i in range(len(data)):
            try:
                peer.sock.sendall(data[i : i + 1])
            except OSError:
                return
            time.sleep(interval)

    return step


def send_repeated(chunk: bytes, count: int) -> Step:
    """Send ``chunk`` ``count`` times (bounded), ignoring a client that hangs up."""

    def step(peer: Peer) -> None:
        try:
            for _ in range(count):
                peer.sock.sendall(chunk)
        except OSError:
            pass

    return step


def starttls(context: ssl.SSLContext) -> Step:
    def step(peer: Peer) -> None:
        peer.sock.settimeout(STEP_TIMEOUT)
        peer.sock = context.wrap_socket(peer.sock, server_side=True)

    return step


def close() -> Step:
    def step(peer: Peer) -> None:
        peer.sock.close()

    return step


def hello(*extensions: str) -> list[Step]:
    """Greeting plus an EHLO reply advertising ``extensions``."""
    lines = [b"250-fake.example"] + [b"250-" + e.encode() for e in extensions]
    lines[-1] = b"250 " + lines[-1][4:]
    return [
        send(b"220 fake.example ESMTP\r\n"),
        expect(b"EHLO"),
        send(b"\r\n".join(lines) + b"\r\n"),
    ]


def goodbye() -> list[Step]:
    """QUIT answered with 221."""
    return [expect(b"QUIT"), send(b"221 bye\r\n")]


def up_to_data(*extensions: str) -> list[Step]:
    """Greeting, EHLO, and MAIL and RCPT accepted, ending when DATA arrives."""
    return [
        *hello(*extensions),
        expect(b"MAIL"),
        send(b"250 ok\r\n"),
        expect(b"RCPT"),
        send(b"250 ok\r\n"),
        expect(b"DATA"),
    ]


def two_pipelined_messages() -> list[Step]:
    """Two transactions where the second's MAIL, RCPT and DATA must arrive with the first's
    end of data, before the server has said anything about the first message."""
    envelope_sent = [expect(b"MAIL"), expect(b"RCPT"), expect(b"DATA")]
    return [
        *hello("PIPELINING"),
        *envelope_sent,
        send(b"250 ok\r\n250 ok\r\n354 go\r\n"),
        expect_data(),
        *envelope_sent,
        send(b"250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
        expect_data(),
        send(b"250 queued 2\r\n"),
        *goodbye(),
    ]


def client_for(server: ScriptedServer, *, connect: bool = False, **options: Any) -> SMTPConnection:
    """An SMTPConnection to ``server`` with short timeouts, optionally connected."""
    conn = SMTPConnection(
        host=server.host, port=server.port, socket_timeout=5, greeting_timeout=5, **options
    )
    if connect:
        conn.connect()
    return conn


class ScriptedServer:
    """Plays ``scripts[i]`` to the i-th connection on a free loopback port."""

    def __init__(self, *scripts: Sequence[Step], host: str = "127.0.0.1") -> None:
        self.scripts = [list(s) for s in scripts]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)

    @property
    def received(self) -> bytes:
        """Everything received on the first connection."""
        return bytes(self.peers[0].received) if self.peers else b""

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for script in self.scripts:
                self._listener.settimeout(STEP_TIMEOUT)
                sock, _ = self._listener.accept()
                peer = Peer(sock)
                self.peers.append(peer)
                try:
                    for step in script:
                        step(peer)
                finally:
                    peer.sock.close()
        except BaseException as exc:  # re-raised in the test by stop()
            self.errors.append(exc)
        finally:
            self._listener.close()

    def stop(self, timeout: float = STEP_TIMEOUT + 5) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "scripted server did not finish its script"
        if self.errors:
            raise self.errors[0]
