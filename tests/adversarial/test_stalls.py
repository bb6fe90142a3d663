"""Servers that stall or drip: every wait ends at its deadline with SMTPTimeoutError."""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from smtppool import Envelope, SMTPConnection, SMTPTimeoutError

from ..servers import (
    ScriptedServer,
    drip,
    expect,
    expect_data,
    hello,
    send,
    sleep,
    starttls,
    up_to_data,
)

Scripted = Callable[..., ScriptedServer]
UP_TO_DATA = up_to_data()


def timed(action: Callable[[], object]) -> tuple[SMTPTimeoutError, float]:
    start = time.monotonic()
    with pytest.raises(SMTPTimeoutError) as info:
        action()
    return info.value, time.monotonic() - start


def test_no_greeting(scripted: Scripted) -> None:
    server = scripted([sleep(3)])
    conn = SMTPConnection(host=server.host, port=server.port, greeting_timeout=0.5)
    error, elapsed = timed(conn.connect)
    assert "greeting" in str(error) and error.code == "ETIMEDOUT" and error.temporary
    assert 0.4 < elapsed < 2.5 and not conn.is_connected


def test_dripped_greeting_cannot_extend_the_deadline(scripted: Scripted) -> None:
    server = scripted([drip(b"220 a very slow greeting indeed\r\n", 0.1)])  # 3.4 s in all
    conn = SMTPConnection(host=server.host, port=server.port, greeting_timeout=1.0)
    error, elapsed = timed(conn.connect)
    assert "greeting" in str(error) and elapsed < 2.5


def test_stalled_reply(scripted: Scripted) -> None:
    server = scripted([*hello(), expect(b"MAIL"), sleep(3)])
    conn = SMTPConnection(host=server.host, port=server.port, socket_timeout=0.5)
    conn.connect()
    error, elapsed = timed(lambda: conn.send(Envelope("a@x.org", "b@x.org"), b"x"))
    assert elapsed < 2.5 and not conn.is_connected  # never reused: a late reply would mispair
    assert not error.delivery_unknown


def test_dripped_reply_cannot_extend_the_deadline(scripted: Scripted) -> None:
    server = scripted([*hello(), expect(b"NOOP"), drip(b"250 fine, thanks for waiting\r\n", 0.1)])
    conn = SMTPConnection(host=server.host, port=server.port, socket_timeout=1.0)
    conn.connect()
    _, elapsed = timed(conn.noop)
    assert elapsed < 2.5


def test_server_that_stops_reading_the_body(scripted: Scripted) -> None:
    server = scripted([*UP_TO_DATA, send(b"354 go\r\n"), sleep(4)])
    conn = SMTPConnection(host=server.host, port=server.port, socket_timeout=0.5)
    conn.connect()
    body = iter([b"y" * 998 + b"\r\n"] * 100_000)  # 100 MB: far more than socket buffers hold
    error, elapsed = timed(lambda: conn.send(Envelope("a@x.org", "b@x.org"), body))
    assert not error.delivery_unknown and elapsed < 3.5 and not conn.is_connected


def test_stall_after_final_dot_is_delivery_unknown(scripted: Scripted) -> None:
    server = scripted([*UP_TO_DATA, send(b"354 go\r\n"), expect_data(), sleep(3)])
    conn = SMTPConnection(host=server.host, port=server.port, socket_timeout=0.5)
    conn.connect()
    error, _ = timed(lambda: conn.send(Envelope("a@x.org", "b@x.org"), b"x\r\n"))
    assert error.delivery_unknown


def test_connect_timeout_to_an_unroutable_address() -> None:
    # A listener with a full backlog does not complete new handshakes on Linux loopback,
    # so connect() blocks until the connection deadline.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        conn = SMTPConnection(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            connection_timeout=0.5,
            greeting_timeout=0.5,
        )
        error, elapsed = timed(conn.connect)
        assert elapsed < 2.5
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts: Linux only")
def test_plaintext_sessions_are_bounded_by_kernel_timeouts(scripted: Scripted) -> None:
    """A blocking socket whose recv/send the kernel times out: no poll() before each call."""
    server = scripted([*hello(), expect(b"MAIL"), sleep(3)])
    conn = SMTPConnection(host=server.host, port=server.port, socket_timeout=0.5)
    conn.connect()
    sock = conn._transport.sock
    assert sock is not None and sock.gettimeout() is None  # blocking, no Python timeout
    seconds, micros = struct.unpack(
        "ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
    )
    assert 0.5 <= seconds + micros / 1e6 <= 0.5 + 0.01
    error, elapsed = timed(lambda: conn.send(Envelope("a@x.org", "b@x.org"), b"x"))
    assert 0.4 < elapsed < 2.5 and error.code == "ETIMEDOUT" and not conn.is_connected


def test_stalls_over_tls_time_out_too(
    scripted: Scripted, client_tls: dict[str, Any], server_tls_context: ssl.SSLContext
) -> None:
    """TLS sockets keep Python timeouts: a stalled reply and a stalled body both end."""
    tls_hello = [
        *hello("STARTTLS"),
        expect(b"STARTTLS"),
        send(b"220 go\r\n"),
        starttls(server_tls_context),
        expect(b"EHLO"),
        send(b"250-tls.example\r\n250 PIPELINING\r\n"),
    ]
    server = scripted([*tls_hello, expect(b"NOOP"), sleep(3)])
    conn = SMTPConnection(host="localhost", port=server.port, tls=client_tls, socket_timeout=0.5)
    conn.connect()
    assert conn.secure
    _, elapsed = timed(conn.noop)
    assert 0.4 < elapsed < 2.5 and not conn.is_connected

    server = scripted(
        [*tls_hello, expect(b"MAIL"), send(b"250 ok\r\n250 ok\r\n354 go\r\n"), sleep(4)]
    )
    conn = SMTPConnection(host="localhost", port=server.port, tls=client_tls, socket_timeout=0.5)
    conn.connect()
    body = iter([b"y" * 998 + b"\r\n"] * 100_000)  # 100 MB: far more than socket buffers hold
    error, elapsed = timed(lambda: conn.send(Envelope("a@x.org", "b@x.org"), body))
    assert not error.delivery_unknown and elapsed < 3.5 and not conn.is_connected


def test_a_socket_given_already_in_tls_keeps_python_timeouts(
    scripted: Scripted, client_tls: dict[str, Any], server_tls_context: ssl.SSLContext
) -> None:
    """get_socket may hand over a TLS socket: a kernel timeout would never end its reads."""
    server = scripted([starttls(server_tls_context), *hello(), expect(b"NOOP"), sleep(3)])
    context = ssl.create_default_context(cadata=client_tls["cadata"])

    def tls_socket(options: Any) -> socket.socket:
        raw = socket.create_connection((server.host, server.port), timeout=5)
        return context.wrap_socket(raw, server_hostname="localhost")

    conn = SMTPConnection(
        host="localhost", port=server.port, get_socket=tls_socket, socket_timeout=0.5
    )
    conn.connect()
    sock = conn._transport.sock
    assert isinstance(sock, ssl.SSLSocket) and sock.gettimeout() is not None
    _, elapsed = timed(conn.noop)
    assert 0.4 < elapsed < 2.5 and not conn.is_connected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts: Linux only")
def test_a_nearly_spent_deadline_is_never_armed_as_no_timeout() -> None:
    """A zero timeval means no timeout at all: the shortest one armed is 1 µs."""
    from smtppool.transport import _set_kernel_timeout

    with socket.socket() as sock:
        _set_kernel_timeout(sock, 1e-9)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
            assert (seconds, micros) != (0, 0)
