"""Pipelining across transactions: the next MAIL leaves with the previous end of data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from smtppool import ConnectError, Envelope, EnvelopeError, MessageError, SMTPConnection, SMTPError
from smtppool.sink import Sink

from ..servers import (
    ScriptedServer,
    client_for,
    close,
    expect,
    expect_data,
    expect_eof,
    hello,
    send,
    two_pipelined_messages,
)

Scripted = Callable[..., ScriptedServer]
ENVELOPE_SENT = [expect(b"MAIL"), expect(b"RCPT"), expect(b"DATA")]


def feeder(items: list[tuple[Any, bytes]]) -> tuple[tuple[Any, bytes], Callable[[], Any]]:
    rest: Iterator[tuple[Any, bytes]] = iter(items[1:])
    return items[0], lambda: next(rest, None)


def two() -> list[tuple[Any, bytes]]:
    return [
        (Envelope("a@x.org", "b@x.org"), b"one\r\n"),
        (Envelope("a@x.org", "c@x.org"), b"two\r\n"),
    ]


def connect(server: ScriptedServer) -> SMTPConnection:
    return client_for(server, connect=True)


def test_next_mail_rides_with_the_previous_end_of_data(scripted: Scripted) -> None:
    conn = connect(scripted(two_pipelined_messages()))
    outcomes = list(conn.send_stream(*feeder(two())))
    assert [o.response for o in outcomes] == ["250 queued 1", "250 queued 2"]  # type: ignore[union-attr]
    assert conn.messages_sent == 2
    conn.quit()


def test_loss_after_an_end_of_data(scripted: Scripted) -> None:
    server = scripted(
        [
            *hello("PIPELINING"),
            *ENVELOPE_SENT,
            send(b"250 ok\r\n250 ok\r\n354 go\r\n"),
            expect_data(),
            expect(b"MAIL"),
            close(),
        ]
    )
    conn = connect(server)
    first, second = list(conn.send_stream(*feeder(two())))
    assert isinstance(first, ConnectError) and first.delivery_unknown
    assert isinstance(second, ConnectError) and not second.delivery_unknown  # may be retried
    assert not conn.is_connected


def test_refused_verdict_leaves_the_next_message_alone(scripted: Scripted) -> None:
    server = scripted(
        [
            *hello("PIPELINING"),
            *ENVELOPE_SENT,
            send(b"250 ok\r\n250 ok\r\n354 go\r\n"),
            expect_data(),
            *ENVELOPE_SENT,
            send(b"554 5.7.1 spam\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            expect_data(),
            send(b"250 queued 2\r\n"),
            expect_eof(),
        ]
    )
    conn = connect(server)
    first, second = list(conn.send_stream(*feeder(two())))
    assert isinstance(first, MessageError) and first.response_code == 554
    assert not isinstance(second, SMTPError) and second.response == "250 queued 2"
    conn.close()


def test_mixed_outcomes_in_order_against_the_sink(smtpd: Callable[..., Sink]) -> None:
    sink = smtpd(
        extensions=["PIPELINING"], reject_recipients=["nobody@x.org"], data_size_limit=5000
    )
    items: list[tuple[Any, bytes]] = []
    for i in range(40):
        to = "nobody@x.org" if i % 10 == 3 else f"u{i}@x.org"
        body = b"x" * 6000 + b"\r\n" if i == 17 else b"message %d\r\n" % i  # 17: over SIZE
        items.append((Envelope("a@x.org", to), body))
    with SMTPConnection(host=sink.host, port=sink.port) as conn:
        outcomes = list(conn.send_stream(*feeder(items)))
        conn.noop()  # still in step
    assert len(outcomes) == 40
    for i, outcome in enumerate(outcomes):
        if i % 10 == 3:
            assert isinstance(outcome, EnvelopeError), (i, outcome)
        elif i == 17:
            assert isinstance(outcome, MessageError) and outcome.response_code is None
        else:
            assert not isinstance(outcome, SMTPError) and outcome.accepted == [f"u{i}@x.org"]
    assert [m.rcpt_tos[0] for m in sink.messages] == [
        f"u{i}@x.org" for i in range(40) if i % 10 != 3 and i != 17
    ]
    assert {m.connection for m in sink.messages} == {1}
