"""Stacked CHUNKING transactions against the in-memory server: the window, each
message's fate from its own replies, and a connection dropped at every position of a
stack (see tests/memory.py; no network, no threads)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool import (
    ConnectError,
    Envelope,
    EnvelopeError,
    MessageError,
    SendResult,
    SMTPConnection,
    SMTPError,
    SMTPPool,
)
from smtppool.protocol import SMTPProtocol, State

from ..memory import MemoryServer

CHUNKING = ("PIPELINING", "CHUNKING", "8BITMIME")


class Item:
    def __init__(self, index: int, to: str | list[str] = "", sender: str = "a@x.org") -> None:
        self.index = index
        self.envelope = Envelope(sender, to or f"u{index}@x.org")
        self.body = b"Subject: %d\r\n\r\nmessage %d\r\n" % (index, index)
        self.pieces: list[bytes] | None = None  # sent as these chunks, when set

    def content(self) -> bytes | list[bytes]:
        return self.body if self.pieces is None else self.pieces


def transactions_per_write(server: MemoryServer) -> list[int]:
    return [w.count(b"MAIL FROM:") for w in server.connections[0].written if b"MAIL FROM:" in w]


@pytest.mark.parametrize("window", [2, 16, 64])
def test_a_stack_delivers_each_message_once_several_to_a_write(
    connect: Callable[..., SMTPConnection], window: int
) -> None:
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=window, max_messages=10_000)
    items = [Item(i) for i in range(200)]
    outcomes = list(conn.send_each(iter(items)))
    assert [item for item, _ in outcomes] == items  # in order, each with its own outcome
    assert all(isinstance(outcome, SendResult) for _, outcome in outcomes)
    assert [m.data for m in server.messages] == [item.body for item in items]
    assert [m.rcpt_to for m in server.messages] == [[f"u{i}@x.org"] for i in range(200)]
    per_write = transactions_per_write(server)
    assert max(per_write) == window  # the first write fills the window
    assert sum(per_write) == 200
    assert conn.messages_sent == 200 and conn.is_within_limits()  # clean afterwards
    assert conn.send(Envelope("a@x.org", "last@x.org"), b"x\r\n").accepted == ["last@x.org"]


@pytest.mark.parametrize("window", [2, 3, 8])
def test_a_message_settled_leaves_the_window_before_the_next_write(
    connect: Callable[..., SMTPConnection], window: int
) -> None:
    """The next message goes out as soon as a reply settles one (here each read brings
    one reply), not after a further reply: a window of w keeps w messages in flight,
    where waiting one more reply would leave w - 1 a round trip apart."""
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=window, max_messages=10_000)
    outcomes = list(conn.send_each(iter([Item(i) for i in range(5 * window)])))
    assert all(isinstance(outcome, SendResult) for _, outcome in outcomes)
    transcript = server.connections[0].transcript
    writes = [i for i, (side, data) in enumerate(transcript) if b"MAIL FROM:" in data]
    assert len(writes) == 1 + 4 * window  # the first fills the window, then one by one
    for i in writes[1:]:
        assert transcript[i - 1] == ("S", b"250 2.0.0 queued\r\n")  # the settling reply


def test_a_window_of_one_sends_one_transaction_per_round_trip(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=1)
    outcomes = list(conn.send_each(iter([Item(i) for i in range(10)])))
    assert all(isinstance(outcome, SendResult) for _, outcome in outcomes)
    assert transactions_per_write(server) == [1] * 10
    assert b"RSET" not in b"".join(server.connections[0].written)  # today's path


def test_the_window_in_bytes_holds_back_the_next_message(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=100, stack_bytes=100)
    outcomes = list(conn.send_each(iter([Item(i) for i in range(20)])))
    assert all(isinstance(outcome, SendResult) for _, outcome in outcomes)
    assert max(transactions_per_write(server)) <= 2  # ~60 bytes of commands each


def test_refusals_in_the_middle_of_a_stack_fail_only_their_own_messages(
    connect: Callable[..., SMTPConnection],
) -> None:
    """The server keeps a refused transaction open until RSET (the strictest reading of
    RFC 3030): the RSET after each message keeps the next one from inheriting it."""
    server = MemoryServer(extensions=CHUNKING, refuse=["no@x.org"], refuse_senders=["bad@x.org"])
    conn = connect(server, stack_messages=16, max_messages=10_000)
    items = [Item(i) for i in range(30)]
    items[5] = Item(5, "no@x.org")  # every recipient refused
    items[6] = Item(6, sender="bad@x.org")  # sender refused
    items[7] = Item(7, ["no@x.org", "u7@x.org"])  # one of two refused
    items[20] = Item(20, sender="bad@x.org")
    outcomes = dict((item.index, outcome) for item, outcome in conn.send_each(iter(items)))
    for index in (5, 6, 20):
        assert isinstance(outcomes[index], EnvelopeError), index
    assert "every recipient" in outcomes[5].message
    assert "sender <bad@x.org> refused" in outcomes[6].message
    assert outcomes[6].response_code == 553
    partial = outcomes[7]
    assert isinstance(partial, SendResult)
    assert (partial.accepted, partial.rejected) == (["u7@x.org"], ["no@x.org"])
    others = [i for i in range(30) if i not in (5, 6, 20)]
    assert all(isinstance(outcomes[i], SendResult) for i in others)
    assert [m.data for m in server.messages] == [items[i].body for i in others]
    assert server.messages[others.index(7)].rcpt_to == ["u7@x.org"]


def test_a_refused_message_end_fails_each_message_on_its_own(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer(extensions=CHUNKING, refuse_data=True)
    conn = connect(server, stack_messages=8)
    outcomes = list(conn.send_each(iter([Item(i) for i in range(12)])))
    assert all(isinstance(o, MessageError) and o.response_code == 554 for _, o in outcomes)
    assert conn.is_within_limits()


def test_a_large_message_inside_a_stack_goes_in_chunks_paced_by_replies(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=8, stack_bytes=128 * 1024)
    items = [Item(i) for i in range(10)]
    items[4].body = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 40_000 + b"\r\n"  # 640 KB
    outcomes = list(conn.send_each(iter(items)))
    assert all(isinstance(outcome, SendResult) for _, outcome in outcomes)
    assert [m.data for m in server.messages] == [item.body for item in items]
    # No write holds more than the byte window and one more chunk.
    assert max(map(len, server.connections[0].written)) <= 128 * 1024 + 65 * 1024


def replies_of_a_stack(sizes: list[int]) -> int:
    """Replies a run of messages with ``sizes`` chunks each earns: MAIL, RCPT, one per
    chunk, RSET."""
    return sum(3 + chunks for chunks in sizes)


@pytest.mark.parametrize("drop_after", range(0, replies_of_a_stack([1, 1, 3, 1, 1, 1]) + 1))
def test_a_connection_dropped_anywhere_in_a_stack_reports_exactly_the_unknown(
    connect: Callable[..., SMTPConnection], drop_after: int
) -> None:
    """The server carries out every command it has read but goes silent after
    ``drop_after`` replies (a count of 0 to past the end: before, between and after
    the replies of each message), then writes fail.  A message delivered without its
    verdict is ``delivery_unknown``, and only such messages; one reported as not sent
    was not delivered."""
    server = MemoryServer(extensions=CHUNKING)
    conn = connect(server, stack_messages=4, stack_bytes=200 * 1024)
    server.drop_after = drop_after + 1  # after the reply to EHLO
    items = [Item(i) for i in range(6)]
    items[2].pieces = [b"Subject: big\r\n\r\n", b"x" * 50_000, b"y" * 50_000 + b"\r\n"]
    items[2].body = b"".join(items[2].pieces)
    outcomes = list(conn.send_each(iter(items)))
    taken = [item for item, _ in outcomes]
    assert taken == items[: len(taken)]
    delivered = [next(i for i in items if i.body == m.data) for m in server.messages]
    assert len(delivered) == len(set(delivered))  # nothing delivered twice
    for item, outcome in outcomes:
        if isinstance(outcome, SendResult):
            assert item in delivered
        else:
            assert isinstance(outcome, ConnectError), outcome
            # Unknown exactly when the server has it but could not say so.
            assert outcome.delivery_unknown == (item in delivered), (item.index, outcome)
    if drop_after >= replies_of_a_stack([1, 1, 3, 1, 1, 1]):
        assert all(isinstance(o, SendResult) for _, o in outcomes) and len(outcomes) == 6
    assert not conn.is_connected or drop_after >= replies_of_a_stack([1, 1, 3, 1, 1, 1])


def test_a_pool_over_dropping_connections_never_delivers_a_message_twice() -> None:
    """Each connection dies after 11 replies; the pool retries what was provably not
    sent, never what may have been."""
    server = MemoryServer(extensions=CHUNKING, drop_after=11)
    messages = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(60)]
    with SMTPPool(
        host="memory.test",
        get_socket=server.connect,
        max_connections=2,
        retries=50,
        stack_messages=4,
    ) as pool:
        futures = [
            pool.submit(m, Envelope("a@x.org", f"u{i}@x.org")) for i, m in enumerate(messages)
        ]
        fates: list[SendResult | SMTPError] = []
        for future in futures:
            try:
                fates.append(future.result(timeout=30))
            except SMTPError as exc:
                fates.append(exc)
    counts = [sum(m.data == body for m in server.messages) for body in messages]
    assert max(counts) == 1
    for fate, count in zip(fates, counts, strict=True):
        if isinstance(fate, SendResult):
            assert count == 1
        else:
            assert fate.delivery_unknown, fate  # a failure without a reply
    # Two messages answered per connection, the two behind them unknown: each
    # connection's work is settled, and new connections carry the rest.
    assert sum(isinstance(f, SendResult) for f in fates) >= 15
    assert len(server.connections) >= 15


def test_max_messages_holds_with_a_stack() -> None:
    server = MemoryServer(extensions=CHUNKING)
    with SMTPPool(
        host="memory.test", get_socket=server.connect, max_connections=2, max_messages=7
    ) as pool:
        for future in [pool.submit(b"x\r\n", Envelope("a@x.org", "b@x.org")) for _ in range(100)]:
            future.result(timeout=30)
    per_connection = [sum(m.connection == n for m in server.messages) for n in range(1, 40)]
    assert sum(per_connection) == 100 and max(per_connection) <= 7


def test_a_reply_to_an_earlier_stacked_transaction_leaves_the_current_one_alone() -> None:
    protocol = SMTPProtocol()
    protocol.receive_data(b"220 hi\r\n")
    protocol.next_reply()
    protocol.ehlo("client.example")
    protocol.receive_data(b"250-hi\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    protocol.next_reply()
    protocol.mail("a@x.org")
    protocol.rcpt("b@x.org")
    protocol.bdat(b"x", last=True)
    protocol.rset()
    protocol.mail("c@x.org")  # the next transaction, before any reply
    protocol.receive_data(b"550 no\r\n")  # the first transaction's MAIL refused
    assert protocol.next_reply() is not None
    assert protocol.state is State.MAIL  # still the second one's
    protocol.rcpt("d@x.org")
    assert protocol.state is State.RCPT
