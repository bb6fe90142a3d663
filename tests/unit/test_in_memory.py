"""Connection and pool behaviour against the in-memory server: no network, no server
thread, no sleep (see tests/memory.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from smtppool import (
    ConnectError,
    Envelope,
    EnvelopeError,
    RateLimitError,
    SendResult,
    SMTPConnection,
    SMTPError,
    SMTPPool,
)
from smtppool.ratelimit import FREE_LEASE, ConnectionLease

from ..memory import MemoryServer


class Item:
    def __init__(self, index: int, to: str) -> None:
        self.envelope = Envelope("a@x.org", to)
        self.body = b"Subject: %d\r\n\r\nmessage %d\r\n" % (index, index)

    def content(self) -> bytes:
        return self.body


def test_a_run_pipelines_one_write_per_message_and_pairs_each_outcome(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer(refuse=["nobody@x.org"])
    conn = connect(server, max_messages=1000)
    items = [Item(i, "nobody@x.org" if i % 7 == 3 else f"u{i}@x.org") for i in range(50)]
    before = len(server.connections[0].written)
    outcomes = list(conn.send_each(iter(items)))
    assert [item for item, _ in outcomes] == items
    for item, outcome in outcomes:
        if item.envelope.rcpt_to[0] == "nobody@x.org":
            assert isinstance(outcome, EnvelopeError) and outcome.response_code == 550
        else:
            assert isinstance(outcome, SendResult) and outcome.accepted == list(
                item.envelope.rcpt_to
            )
    delivered = [m.data for m in server.messages]
    assert delivered == [i.body for i in items if i.envelope.rcpt_to[0] != "nobody@x.org"]
    # One write to start, one per accepted message (its content, end of data and the next
    # MAIL/RCPT/DATA together), and for a refused one the RSET and the next commands.
    writes = len(server.connections[0].written) - before
    assert writes <= 1 + len(items) + 2 * 8, writes
    assert conn.messages_sent == len(delivered)


def test_a_run_stops_taking_items_once_the_server_hangs_up(
    connect: Callable[..., SMTPConnection],
) -> None:
    server = MemoryServer()
    conn = connect(server)
    taken: list[int] = []

    def items() -> Iterator[Item]:
        for i in range(10):
            taken.append(i)
            if i == 3:
                server.hang_up()
            yield Item(i, f"u{i}@x.org")

    outcomes = [outcome for _, outcome in conn.send_each(items())]
    assert all(isinstance(o, SendResult) for o in outcomes[:2])
    assert isinstance(outcomes[-1], ConnectError) and not conn.is_connected
    assert len(taken) < 10  # nothing was taken after the connection was lost


def test_reuse_check_sees_an_idle_hang_up(connect: Callable[..., SMTPConnection]) -> None:
    server = MemoryServer()
    conn = connect(server)
    conn.send(Envelope("a@x.org", "b@x.org"), b"hello\r\n")
    assert conn.is_reusable()
    server.hang_up()
    assert not conn.is_reusable()


def test_the_pool_delivers_each_message_once_within_max_messages() -> None:
    server = MemoryServer()
    with SMTPPool(
        host="memory.test", get_socket=server.connect, max_connections=3, max_messages=40
    ) as pool:
        outcomes = list(
            pool.send_many(
                (b"message %d\r\n" % i, Envelope("a@x.org", f"u{i}@x.org")) for i in range(300)
            )
        )
        stats = pool.stats()
    assert all(isinstance(o, SendResult) for o in outcomes)
    assert sorted(m.data for m in server.messages) == sorted(
        b"message %d\r\n" % i for i in range(300)
    )
    per_connection: dict[int, int] = {}
    for m in server.messages:
        per_connection[m.connection] = per_connection.get(m.connection, 0) + 1
    assert max(per_connection.values()) <= 40 and len(per_connection) >= 300 // 40
    assert stats["sent"] == 300 and stats["failed"] == 0
    assert stats["connections_opened"] == len(server.connections)


def test_a_connection_closed_while_idle_is_replaced_without_an_error() -> None:
    server = MemoryServer()
    with SMTPPool(host="memory.test", get_socket=server.connect, max_connections=1) as pool:
        pool.send(b"one\r\n", Envelope("a@x.org", "b@x.org"))
        server.hang_up()
        result = pool.send(b"two\r\n", Envelope("a@x.org", "b@x.org"))
        assert isinstance(result, SendResult)
        assert pool.stats()["connections_opened"] == 2 and pool.stats()["retried"] == 0
    assert [m.data for m in server.messages] == [b"one\r\n", b"two\r\n"]


@pytest.mark.parametrize("extensions", [(), ("PIPELINING",)], ids=["plain", "pipelining"])
def test_a_refused_recipient_fails_only_its_message(extensions: tuple[str, ...]) -> None:
    server = MemoryServer(extensions=extensions, refuse=["nobody@x.org"])
    with SMTPPool(host="memory.test", get_socket=server.connect, max_connections=1) as pool:
        futures = [
            pool.submit(
                b"m%d\r\n" % i, Envelope("a@x.org", "nobody@x.org" if i == 2 else "b@x.org")
            )
            for i in range(5)
        ]
        outcomes = [f.exception() or f.result() for f in futures]
    assert [isinstance(o, SMTPError) for o in outcomes] == [False, False, True, False, False]
    assert [m.data for m in server.messages] == [b"m0\r\n", b"m1\r\n", b"m3\r\n", b"m4\r\n"]


class BrokenLimiter:
    """A shared limiter whose store has gone away: every decision fails."""

    def acquire(self, timeout: float | None = None) -> bool:
        raise RateLimitError("the limiter's store is unreachable")

    def pause(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass

    def lease_connection(self, timeout: float) -> ConnectionLease:
        return FREE_LEASE


def test_a_limiter_that_fails_fails_the_message_at_once() -> None:
    """The first message of a run used to be settled only once it was on the wire: a
    limiter raising before that left its future pending for good (send() hung)."""
    server = MemoryServer()
    with SMTPPool(
        host="memory.test", get_socket=server.connect, rate_limiter=BrokenLimiter()
    ) as pool:
        future = pool.submit(b"one\r\n", Envelope("a@x.org", "b@x.org"))
        with pytest.raises(RateLimitError):
            future.result(timeout=5)
        assert pool.stats()["in_flight"] == 0 and pool.stats()["failed"] == 1
    assert server.messages == []


class Unreadable(Item):
    def content(self) -> bytes:
        raise OSError("the message file cannot be read")


def test_an_item_that_cannot_be_prepared_fails_alone(
    connect: Callable[..., SMTPConnection],
) -> None:
    """Preparing the next item happens while the current message's data is going out:
    its failure used to close the connection and fail the current message with the
    other item's error."""
    server = MemoryServer()
    conn = connect(server)
    items = [Item(0, "u0@x.org"), Unreadable(1, "u1@x.org"), Item(2, "u2@x.org")]
    run = conn.send_each(iter(items))
    item, outcome = next(run)
    assert item is items[0] and isinstance(outcome, SendResult)
    with pytest.raises(OSError, match="cannot be read"):
        next(run)
    assert [m.data for m in server.messages] == [items[0].body]
    assert conn.is_reusable()  # the session is in step: it goes on
    messages = [b"m0\r\n", UnrewindableFile(b"m1\r\n"), b"m2\r\n", b"m3\r\n"]
    with SMTPPool(host="memory.test", get_socket=server.connect, max_connections=1) as pool:
        futures = [pool.submit(m, Envelope("a@x.org", "b@x.org")) for m in messages]
        outcomes = [f.exception(timeout=5) or f.result() for f in futures]
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["SendResult", "OSError", "SendResult", "SendResult"]
    assert [m.data for m in server.messages][-3:] == [b"m0\r\n", b"m2\r\n", b"m3\r\n"]


class UnrewindableFile(io.BytesIO):
    """A message file that cannot be rewound for its attempt."""

    def seek(self, *args: object) -> int:
        raise OSError("the message file cannot be read")


def test_after_a_refusal_nothing_starts_behind_an_item_that_could_not_be_prepared(
    connect: Callable[..., SMTPConnection],
) -> None:
    """The message under way is refused at its end of data while the next one could not
    be prepared: the run raises that error without starting the one after it."""
    server = MemoryServer(refuse_data=True)
    conn = connect(server)
    items = [Item(0, "u0@x.org"), Unreadable(1, "u1@x.org"), Item(2, "u2@x.org")]
    run = conn.send_each(iter(items))
    item, outcome = next(run)
    assert item is items[0] and isinstance(outcome, SMTPError) and outcome.response_code == 554
    with pytest.raises(OSError, match="cannot be read"):
        next(run)
    assert conn.is_reusable()  # nothing was started behind it: the session is in step
