"""Malformed, oversized, unsolicited and closing replies from a scripted server."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from smtppool import ConnectError, Envelope, ProtocolError, SMTPConnection, SMTPError

from ..servers import (
    ScriptedServer,
    Step,
    client_for,
    close,
    expect,
    expect_data,
    expect_eof,
    hello,
    send,
    send_repeated,
    sleep,
)

Scripted = Callable[..., ScriptedServer]


def client(server: ScriptedServer, **options: object) -> SMTPConnection:
    return client_for(server, **options)


@pytest.mark.parametrize(
    "greeting",
    [
        b"abc not a code\r\n",
        b"2x0 nearly\r\n",
        b"220_weird separator\r\n",
        b"220-first\r\n250 second code\r\n",
        b"\x00\x01\x02\r\n",
    ],
)
def test_malformed_greeting(scripted: Scripted, greeting: bytes) -> None:
    server = scripted([send(greeting)])
    conn = client(server)
    with pytest.raises(ProtocolError) as info:
        conn.connect()
    assert info.value.code == "EPROTOCOL" and not conn.is_connected


def test_one_megabyte_line_is_refused_with_bounded_memory(scripted: Scripted) -> None:
    server = scripted([send(b"220 "), send_repeated(b"x" * 65536, 16)])
    conn = client(server)
    with pytest.raises(ProtocolError, match="longer than 8192"):
        conn.connect()
    assert len(conn._channel.protocol._buffer) < 100_000  # stopped reading long before 1 MB
    assert not conn.is_connected


def test_endless_continuation_lines(scripted: Scripted) -> None:
    server = scripted([send(b"220 hi\r\n"), expect(b"EHLO"), send_repeated(b"250-more\r\n", 5000)])
    with pytest.raises(ProtocolError, match="more than 1000 lines"):
        client(server).connect()


def test_extra_reply_is_not_paired_with_the_next_command(scripted: Scripted) -> None:
    server = scripted(
        [
            send(b"220 hi\r\n"),
            expect(b"EHLO"),
            send(b"250 hello\r\n250 2.1.0 sender ok (unsolicited)\r\n"),
            expect_eof(),
        ]
    )
    conn = client(server)
    conn.connect()
    with pytest.raises(ProtocolError, match="unsolicited"):
        conn.send(Envelope("a@x.org", "b@x.org"), b"x")
    assert not conn.is_connected
    server.stop()
    assert b"EHLO" in server.received and b"MAIL" not in server.received


ENVELOPE_SENT = [*hello(), expect(b"MAIL"), send(b"250 ok\r\n"), expect(b"RCPT")]
BEFORE_421: dict[str, list[Step]] = {
    "greeting": [],
    "EHLO": [send(b"220 hi\r\n"), expect(b"EHLO")],
    "MAIL": [*hello(), expect(b"MAIL")],
    "RCPT": [*hello(), expect(b"MAIL"), send(b"250 ok\r\n"), expect(b"RCPT")],
    "DATA": [*ENVELOPE_SENT, send(b"250 ok\r\n"), expect(b"DATA")],
    "end of data": [
        *ENVELOPE_SENT,
        send(b"250 ok\r\n"),
        expect(b"DATA"),
        send(b"354 go\r\n"),
        expect_data(),
    ],
}


@pytest.mark.parametrize("step", list(BEFORE_421))
def test_421_at_each_step(scripted: Scripted, step: str) -> None:
    server = scripted([*BEFORE_421[step], send(b"421 4.3.2 service shutting down\r\n")])
    conn = client(server)
    with pytest.raises(ConnectError) as info:
        conn.connect()
        conn.send(Envelope("a@x.org", "b@x.org"), b"hello\r\n")
    error = info.value
    assert error.response_code == 421 and error.temporary
    assert error.response == "421 4.3.2 service shutting down"
    assert not error.delivery_unknown  # the server answered: it did not take the message
    assert not conn.is_connected


@pytest.mark.parametrize(
    "size", ["\u00b2", "\u0663\u0664", "9" * 5000, "1e6", "-5", ""], ids=lambda s: ascii(s[:8])
)
def test_a_hostile_size_is_no_limit_not_a_crash(scripted: Scripted, size: str) -> None:
    """``250 SIZE ²`` passed str.isdigit() and int() raised ValueError out of connect(),
    as did a 5,000-digit SIZE (Python's limit on int conversion): whatever the server
    says, the session goes on with no SIZE limit."""
    server = scripted(
        [
            *hello(f"SIZE {size}", "PIPELINING"),
            expect(b"MAIL"),
            send(b"250 ok\r\n250 ok\r\n354 go\r\n"),
            expect_data(),
            send(b"250 queued\r\n"),
        ]
    )
    with client(server) as conn:
        assert conn.extensions.size is None
        result = conn.send(Envelope("a@x.org", "b@x.org"), b"hi\r\n")
    assert result.response == "250 queued"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("case", ["refused", "greeting timeout", "554 greeting", "closed"])
def test_every_connect_error_names_host_and_port(scripted: Scripted, case: str) -> None:
    """``Connection refused`` and the greeting timeout said nothing of where."""
    if case == "refused":
        host, port = "localhost", _closed_port()
    else:
        steps = {
            "greeting timeout": [sleep(2)],
            "554 greeting": [send(b"554 5.7.1 no SMTP service here\r\n")],
            "closed": [close()],
        }[case]
        server = scripted(steps)
        host, port = server.host, server.port
    conn = SMTPConnection(host=host, port=port, greeting_timeout=0.3, socket_timeout=0.3)
    with pytest.raises(SMTPError) as info:
        conn.connect()
    assert info.value.message.startswith(f"{host}:{port}"), info.value.message
    if case == "refused":  # a name: the address it resolved to is named too
        assert f"(tried 127.0.0.1:{port}" in info.value.message or "[::1]" in info.value.message
