"""The server hangs up at every stage: clear errors, and delivery_unknown only after the data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool import ConnectError, Envelope, SMTPConnection

from ..servers import (
    ScriptedServer,
    client_for,
    close,
    expect,
    expect_data,
    hello,
    send,
    up_to_data,
)

Scripted = Callable[..., ScriptedServer]
ENVELOPE = Envelope("a@x.org", "b@x.org")
UP_TO_DATA = up_to_data()


def client(server: ScriptedServer) -> SMTPConnection:
    return client_for(server)


@pytest.mark.parametrize(
    "script",
    [
        [close()],
        [send(b"220-partial greeting\r\n220 and th"), close()],
        [send(b"220 hi\r\n"), expect(b"EHLO"), close()],
    ],
    ids=["at greeting", "mid-reply", "after EHLO"],
)
def test_eof_while_connecting(scripted: Scripted, script: list) -> None:  # type: ignore[type-arg]
    conn = client(scripted(script))
    with pytest.raises(ConnectError, match="closed by the server") as info:
        conn.connect()
    assert info.value.temporary and not info.value.delivery_unknown
    assert not conn.is_connected


def test_eof_in_the_middle_of_data_is_not_delivery_unknown(scripted: Scripted) -> None:
    body = b"x" * 998 + b"\r\n"
    server = scripted([*UP_TO_DATA, send(b"354 go\r\n"), expect(b"x" * 998), close()])
    conn = client(server)
    conn.connect()
    with pytest.raises(ConnectError) as info:
        conn.send(ENVELOPE, iter([body] * 20_000))  # 20 MB: the write fails long before the end
    assert not info.value.delivery_unknown and info.value.temporary
    assert not conn.is_connected


def test_eof_after_the_final_dot_is_delivery_unknown(scripted: Scripted) -> None:
    server = scripted([*UP_TO_DATA, send(b"354 go\r\n"), expect_data(), close()])
    conn = client(server)
    conn.connect()
    with pytest.raises(ConnectError) as info:
        conn.send(ENVELOPE, b"hello\r\n")
    assert info.value.delivery_unknown and "delivery unknown" in str(info.value)
    assert info.value.response_code is None and not conn.is_connected


def test_eof_after_bdat_last_is_delivery_unknown(scripted: Scripted) -> None:
    server = scripted(
        [
            *hello("CHUNKING"),
            expect(b"MAIL"),
            send(b"250 ok\r\n"),
            expect(b"RCPT"),
            send(b"250 ok\r\n"),
            expect(b"BDAT 7 LAST"),
            close(),
        ]
    )
    conn = client(server)
    conn.connect()
    with pytest.raises(ConnectError) as info:
        conn.send(ENVELOPE, b"hello\r\n")
    assert info.value.delivery_unknown


@pytest.mark.parametrize(
    "goodbye",
    [[close()], [send(b"221 bye\r\n")], [send(b"421 closing\r\n")]],
    ids=["hang-up", "221", "421"],
)
def test_quit_tolerates_any_goodbye(scripted: Scripted, goodbye: list) -> None:  # type: ignore[type-arg]
    server = scripted([*hello(), expect(b"QUIT"), *goodbye])
    conn = client(server)
    conn.connect()
    conn.quit()
    assert not conn.is_connected


def test_reset_by_peer_is_a_connect_error(scripted: Scripted) -> None:
    import socket
    import struct

    def reset(peer) -> None:  # type: ignore[no-untyped-def]
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.sock.close()

    server = scripted([*hello(), expect(b"NOOP"), reset])
    conn = client(server)
    conn.connect()
    with pytest.raises(ConnectError):
        conn.noop()
    assert not conn.is_connected
