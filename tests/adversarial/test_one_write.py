"""CHUNKING + PIPELINING: MAIL, RCPT and BDAT LAST with the message, in one write; a
larger message's chunks, LAST included, sent before any reply is needed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool import ConnectError, Envelope, EnvelopeError, MessageError, SMTPConnection
from smtppool.protocol import State
from smtppool.sink import Sink
from smtppool.transaction import BDAT_WINDOW

from ..servers import (
    Peer,
    ScriptedServer,
    Step,
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


def chunks_sent(*commands: tuple[bytes, bytes]) -> list[Step]:
    """The server reads ``BDAT <command>`` and its data for each pair."""
    return [
        step
        for command, data in commands
        for step in (expect(b"BDAT %s\r" % command), expect(data))
    ]


CHUNKS_BEFORE_LAST = chunks_sent((b"5", b"one"), (b"5", b"two"), (b"7", b"three"))
LAST_CHUNK = chunks_sent((b"6 LAST", b"four"))
# Nothing is answered until the whole message is in, LAST included: a client waiting
# for any reply on the way would stall here and the server's read would time out.
WHOLE_FLIGHT = [
    *hello("PIPELINING", "CHUNKING"),
    expect(b"MAIL"),
    expect(b"RCPT"),
    *CHUNKS_BEFORE_LAST,
    *LAST_CHUNK,
]


def silent_for(seconds: float) -> Step:
    """Check the client sends nothing more for ``seconds`` (it must be waiting for us)."""

    def step(peer: Peer) -> None:
        assert not peer.buffer, f"client sent {bytes(peer.buffer)!r} before any reply"
        peer.sock.settimeout(seconds)
        try:
            data = peer.sock.recv(65536)
        except TimeoutError:
            return
        raise AssertionError(f"client sent {data!r} before any reply")

    return step


def test_a_multi_chunk_message_leaves_before_any_reply(scripted: Scripted) -> None:
    server = scripted(
        [
            *WHOLE_FLIGHT,
            send(b"250 ok\r\n250 ok\r\n250 5\r\n250 5\r\n250 7\r\n250 2.0.0 queued\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    result = conn.send(Envelope("a@x.org", "b@x.org"), iter(CHUNKS))
    assert result.response == "250 2.0.0 queued" and result.accepted == ["b@x.org"]
    conn.quit()


def test_at_most_a_window_of_chunks_goes_unanswered(scripted: Scripted) -> None:
    chunks = [b"%d\r\n" % (i % 10) for i in range(BDAT_WINDOW + 2)]  # BDAT 3 each
    server = scripted(
        [
            *hello("PIPELINING", "CHUNKING"),
            expect(b"MAIL"),
            expect(b"RCPT"),
            *chunks_sent(*[(b"3", b"")] * (BDAT_WINDOW + 1)),
            silent_for(0.3),  # one chunk over the window: the client waits for a reply
            send(b"250 ok\r\n" * (2 + BDAT_WINDOW + 1)),
            *chunks_sent((b"3 LAST", b"")),
            send(b"250 2.0.0 queued\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    assert conn.send(Envelope("a@x.org", "b@x.org"), iter(chunks)).response == "250 2.0.0 queued"
    conn.quit()


@pytest.mark.parametrize("last_sent", [True, False])
def test_loss_is_delivery_unknown_only_once_last_has_left(
    scripted: Scripted, last_sent: bool
) -> None:
    count = 4 if last_sent else BDAT_WINDOW + 2  # more than a window: stuck before LAST
    server = scripted(
        [
            *hello("PIPELINING", "CHUNKING"),
            expect(b"MAIL"),
            expect(b"RCPT"),
            *chunks_sent(*[(b"3", b"")] * (count - 1 if last_sent else BDAT_WINDOW + 1)),
            *(chunks_sent((b"3 LAST", b"")) if last_sent else [silent_for(0.2)]),
            close(),
        ]
    )
    conn = client(server)
    with pytest.raises(ConnectError) as info:
        conn.send(Envelope("a@x.org", "b@x.org"), iter([b"x\r\n"] * count))
    assert info.value.delivery_unknown is last_sent and not conn.is_connected


def test_a_refused_chunk_fails_the_message_and_resets(scripted: Scripted) -> None:
    """The server discards (and answers) what was pipelined after the refused chunk."""
    server = scripted(
        [
            *WHOLE_FLIGHT,
            send(b"250 ok\r\n250 ok\r\n250 2.0.0 ok\r\n552 5.3.4 too big\r\n"),
            send(b"503 5.5.1 discarded\r\n503 5.5.1 discarded\r\n"),
            expect(b"RSET"),
            send(b"250 2.0.0 reset\r\n"),
            *goodbye(),
        ]
    )
    conn = client(server)
    with pytest.raises(MessageError, match="BDAT refused") as info:
        conn.send(Envelope("a@x.org", "b@x.org"), iter(CHUNKS))
    assert info.value.response_code == 552 and not info.value.delivery_unknown
    assert conn.is_connected and conn.state is State.READY
    conn.quit()


def test_lmtp_hears_every_chunk_before_last(scripted: Scripted) -> None:
    """How many replies a discarded LAST gets is not settled for LMTP: no LAST unheard."""
    server = scripted(
        [
            send(b"220 lmtp ready\r\n"),
            expect(b"LHLO"),
            send(b"250-lmtp\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
            expect(b"MAIL"),
            expect(b"RCPT TO:<b@x.org>"),
            expect(b"RCPT TO:<c@x.org>"),
            *CHUNKS_BEFORE_LAST,
            silent_for(0.3),
            send(b"250 ok\r\n250 ok\r\n250 ok\r\n250 5\r\n250 5\r\n250 7\r\n"),
            *LAST_CHUNK,
            send(b"250 2.0.0 <b@x.org> ok\r\n452 4.2.2 <c@x.org> over quota\r\n"),
            *goodbye(),
        ]
    )
    conn = client_for(server, connect=True, lmtp=True)
    result = conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), iter(CHUNKS))
    assert result.accepted == ["b@x.org"] and result.rejected == ["c@x.org"]
    conn.quit()
