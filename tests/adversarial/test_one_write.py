"""CHUNKING + PIPELINING: MAIL, RCPT and BDAT LAST with the message, in one write; the
chunks of a larger message pipelined instead of a round trip each."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool import ConnectError, Envelope, EnvelopeError, MessageError, SMTPConnection
from smtppool.protocol import State
from smtppool.sink import Sink

from ..servers import (
    ScriptedServer,
    client_for,
    close,
    expect,
    expect_eof,
    goodbye,
    hello,
    send,
)

Scripted = Callable[..., ScriptedServer]
BODY = b"hello\r\n"
ONE_WRITE = [
    *hello("PIPELINING", "CHUNKING"),
    expect(b"MAIL FROM:<a@x.org>"),
    expect(b"RCPT TO:<b@x.org>"),
    expect(b"BDAT 7 LAST"),
    expect(b"hello"),
]


def client(server: ScriptedServer) -> SMTPConnection:
    return client_for(server, connect=True)


def test_whole_transaction_before_any_reply(scripted: Scripted) -> None:
    """The server reads everything before answering: one round trip per message."""
    server = scripted(
        [
            *ONE_WRITE,
            send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    result = conn.send(Envelope("a@x.org", "b@x.org"), BODY)
    assert result.response == "250 2.0.0 queued" and result.accepted == ["b@x.org"]
    conn.quit()


def test_loss_after_the_single_write_is_delivery_unknown(scripted: Scripted) -> None:
    server = scripted([*ONE_WRITE, close()])
    conn = client(server)
    with pytest.raises(ConnectError) as info:
        conn.send(Envelope("a@x.org", "b@x.org"), BODY)
    assert info.value.delivery_unknown and not conn.is_connected


def test_refused_recipients_reset_the_session(scripted: Scripted) -> None:
    server = scripted(
        [
            *ONE_WRITE,
            send(b"250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"),
            expect(b"RSET"),
            send(b"250 reset\r\n"),
            expect_eof(),
        ]
    )
    conn = client(server)
    with pytest.raises(EnvelopeError, match="every recipient was refused") as info:
        conn.send(Envelope("a@x.org", "b@x.org"), BODY)
    assert info.value.response_code == 550 and not info.value.delivery_unknown
    assert conn.state is State.READY and conn.is_connected
    conn.close()


def test_lmtp_verdicts_in_one_write(smtpd: Callable[..., Sink]) -> None:
    sink = smtpd(
        lmtp=True, extensions=["PIPELINING", "CHUNKING"], reject_recipients=["ghost@x.org"]
    )
    with SMTPConnection(host=sink.host, port=sink.port, lmtp=True) as conn:
        result = conn.send(Envelope("a@x.org", ["b@x.org", "ghost@x.org", "c@x.org"]), BODY)
        assert result.accepted == ["b@x.org", "c@x.org"] and result.rejected == ["ghost@x.org"]
        assert result.recipient_responses["c@x.org"].startswith("250 2.0.0 <c@x.org>")
        conn.send(Envelope("a@x.org", "b@x.org"), BODY)  # the session is in step
    assert [m.transfer for m in sink.messages] == ["BDAT", "BDAT"]
    assert sink.messages[0].data == BODY


CHUNKS = [b"one\r\n", b"two\r\n", b"three\r\n", b"four\r\n"]  # BDAT 5, 5, 7, 6 LAST
THREE_CHUNKS_UNANSWERED = [
    *hello("PIPELINING", "CHUNKING"),
    expect(b"MAIL"),
    expect(b"RCPT"),
    send(b"250 ok\r\n250 ok\r\n"),
    # Nothing is answered until all three chunks are in: a client waiting for each
    # chunk's reply would stall here and this read would time out.
    *(
        step
        for size, data in [(5, b"one"), (5, b"two"), (7, b"three")]
        for step in (expect(b"BDAT %d\r" % size), expect(data))
    ),
]


def test_chunks_leave_before_their_replies(scripted: Scripted) -> None:
    server = scripted(
        [
            *THREE_CHUNKS_UNANSWERED,
            send(b"250 2.0.0 5 octets\r\n250 2.0.0 5 octets\r\n250 2.0.0 7 octets\r\n"),
            expect(b"BDAT 6 LAST"),
            expect(b"four"),
            send(b"250 2.0.0 queued\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    result = conn.send(Envelope("a@x.org", "b@x.org"), iter(CHUNKS))
    assert result.response == "250 2.0.0 queued"
    conn.quit()


def test_a_refused_chunk_stops_the_message_and_resets(scripted: Scripted) -> None:
    """Every pipelined chunk's reply is read, LAST is never sent, RSET follows."""
    server = scripted(
        [
            *THREE_CHUNKS_UNANSWERED,
            send(b"250 2.0.0 ok\r\n552 5.3.4 too big\r\n250 2.0.0 ok\r\n"),
            expect(b"RSET"),
            send(b"250 2.0.0 reset\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    with pytest.raises(MessageError, match="BDAT refused") as info:
        conn.send(Envelope("a@x.org", "b@x.org"), iter(CHUNKS))
    assert info.value.response_code == 552
    assert conn.is_connected and conn.state is State.READY
    conn.quit()
