"""A stack of transactions against a server that stops reading until its replies are
read: the client reads replies while it writes, so neither side waits on the other."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from smtppool import Envelope, Options, SendResult, SMTPConnection

SMALL_BUFFER = 4096
RECIPIENTS = 3000


class BlockingSink:
    """A CHUNKING sink on loopback whose replies go out with blocking writes through a
    small send buffer: while we do not read them, it stops reading us."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(20)
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        conn.settimeout(20)
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        reader = conn.makefile("rb")
        try:
            conn.sendall(b"220 sink\r\n")
            chunks: list[bytes] = []
            while line := reader.readline():
                verb = line.split(b" ", 1)[0].upper().strip()
                if verb == b"EHLO":
                    conn.sendall(b"250-sink\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
                elif verb == b"BDAT":
                    words = line.split()
                    chunks.append(reader.read(int(words[1])))
                    if len(words) > 2:
                        self.messages.append(b"".join(chunks))
                        chunks = []
                    conn.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    break
                else:  # MAIL, RCPT, RSET
                    conn.sendall(b"250 2.1.5 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(25)


@pytest.fixture(params=["plain", "TLS"])
def sink(
    request: pytest.FixtureRequest, server_tls_context: ssl.SSLContext
) -> Iterator[BlockingSink]:
    """Plaintext (a kernel-timed blocking socket) and implicit TLS (made non-blocking
    for the length of a write): the two ways the client reads while writing."""
    server = BlockingSink(server_tls_context if request.param == "TLS" else None)
    yield server
    server.close()


def small_socket(options: Options) -> socket.socket:
    """A client socket with small buffers too, so that a stall shows at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.connect((options.host, options.port))
    return sock


class Item:
    def __init__(self, index: int) -> None:
        self.envelope = Envelope("a@x.org", [f"user{n}@example.org" for n in range(RECIPIENTS)])
        self.body = b"Subject: %d\r\n\r\nbody\r\n" % index

    def content(self) -> bytes:
        return self.body


def run(sink: BlockingSink, client_tls: dict[str, Any]) -> list[object]:
    with SMTPConnection(
        host="127.0.0.1",
        port=sink.port,
        get_socket=small_socket,
        socket_timeout=3,
        secure=sink.tls is not None,
        tls=client_tls,
    ) as conn:
        return [outcome for _, outcome in conn.send_each(iter([Item(0), Item(1)]))]


@pytest.mark.timeout(60)
def test_a_stack_reads_replies_while_it_writes(
    sink: BlockingSink, client_tls: dict[str, Any]
) -> None:
    outcomes = run(sink, client_tls)
    assert all(isinstance(o, SendResult) and len(o.accepted) == RECIPIENTS for o in outcomes)
    assert sink.messages == [Item(0).body, Item(1).body]


@pytest.mark.timeout(60)
def test_the_same_stack_written_without_reading_stalls() -> None:
    """The control, in plaintext: a client that writes the same commands without reading
    waits for the server, which waits for it, until its deadline."""
    sink = BlockingSink()
    recipients = b"".join(b"RCPT TO:<user%d@example.org>\r\n" % n for n in range(RECIPIENTS))
    stack = b"EHLO client\r\nMAIL FROM:<a@x.org>\r\n" + recipients + b"BDAT 4 LAST\r\nbody"
    try:
        sock = small_socket(Options(host="127.0.0.1", port=sink.port))
        sock.settimeout(3)
        with sock, pytest.raises(TimeoutError):
            sock.sendall(stack * 2)
    finally:
        sink.close()
