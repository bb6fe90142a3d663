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


class Item:
    """An Outgoing item that records when its content was asked for."""

    def __init__(self, envelope: Envelope, body: bytes, log: list[str]) -> None:
        self.envelope, self.body, self.log = envelope, body, log

    def content(self) -> bytes:
        self.log.append(f"content {self.envelope.rcpt_to[0]}")
        return self.body


def test_send_each_pairs_every_outcome_with_its_item(smtpd: Callable[..., Sink]) -> None:
    """send_each takes an iterator of items and yields (item, outcome): an item refused
    before the wire (over SIZE) and one refused by the server each come back with their
    own item, and the next item is taken only when the connection can send it."""
    sink = smtpd(extensions=["PIPELINING"], reject_recipients=["c@x.org"], data_size_limit=5000)
    log: list[str] = []
    bodies = {"b": b"one\r\n", "big": b"x" * 6000 + b"\r\n", "c": b"three\r\n", "d": b"four\r\n"}
    items = [Item(Envelope("a@x.org", f"{k}@x.org"), v, log) for k, v in bodies.items()]

    def source() -> Iterator[Item]:
        for item in items:
            log.append(f"take {item.envelope.rcpt_to[0]}")
            yield item

    with SMTPConnection(host=sink.host, port=sink.port) as conn:
        pairs = []
        for item, outcome in conn.send_each(source()):
            log.append(f"outcome {item.envelope.rcpt_to[0]}")
            pairs.append((item, outcome))
    assert [item for item, _ in pairs] == items  # in order, each with its own outcome
    by_name = {item.envelope.rcpt_to[0]: outcome for item, outcome in pairs}
    assert isinstance(by_name["big@x.org"], MessageError)
    assert isinstance(by_name["c@x.org"], EnvelopeError)
    assert not isinstance(by_name["b@x.org"], SMTPError) and by_name["b@x.org"].accepted
    assert not isinstance(by_name["d@x.org"], SMTPError) and by_name["d@x.org"].accepted
    # Each content is asked for once, right after its item is taken; the third item is
    # taken only once the first message's data is on its way (it rides with its end).
    assert log.count("content b@x.org") == 1 and log.count("content d@x.org") == 1
    assert log.index("take c@x.org") > log.index("content b@x.org")
    assert [m.rcpt_tos[0] for m in sink.messages] == ["b@x.org", "d@x.org"]
