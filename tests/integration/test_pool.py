"""SMTPPool against real aiosmtpd servers: concurrency, limits, idleness, failures, close."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from smtppool import (
    AuthenticationError,
    ConnectError,
    Envelope,
    EnvelopeError,
    PoolClosedError,
    SendResult,
    SMTPError,
    SMTPPool,
    TLSError,
)
from smtppool import pool as pool_module
from smtppool.sink import Sink

from ..servers import ScriptedServer, close, expect_data, send, up_to_data, wait_until

SinkFactory = Callable[..., Sink]
RAW = b"From: a@x.org\r\nTo: b@x.org\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def make_pool() -> Iterator[Callable[..., SMTPPool]]:
    """Factory for pools that are always closed at teardown (bounded by their timeouts)."""
    pools: list[SMTPPool] = []

    def make(sink: Sink | ScriptedServer | None = None, **options: Any) -> SMTPPool:
        if sink is not None:
            options.setdefault("host", sink.host)
            options.setdefault("port", sink.port)
        pool = SMTPPool(**options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(wait=False)
    wait_until(  # in-flight work finishes in the background
        lambda: (
            not any(
                t.name.startswith(("smtppool_", "smtppool-housekeeper"))
                for t in threading.enumerate()
            )
        ),
        10,
    )


def message(index: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@x.org"
    msg["To"] = f"user{index}@x.org"
    msg["Message-ID"] = f"<m{index}@x.org>"
    msg["Subject"] = f"message {index}"
    msg.set_content(f"body {index}")
    return msg


def message_ids(sink: Sink) -> list[str]:
    ids = []
    for received in sink.messages:
        for line in received.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
    return ids


def test_many_threads_send_and_submit_exactly_once(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd(extensions=["PIPELINING"])
    pool = make_pool(sink, max_connections=4, max_messages=15)
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            futures = []
            for i in range(start, start + 10):
                if i % 2:
                    assert pool.send(message(i)).accepted == [f"user{i}@x.org"]
                else:
                    futures.append((i, pool.submit(message(i))))
            for i, future in futures:
                assert future.result(timeout=60).accepted == [f"user{i}@x.org"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 10,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    ids = message_ids(sink)
    assert sorted(ids) == sorted(f"<m{i}@x.org>" for i in range(500))  # each exactly once
    assert sink.max_concurrent <= 4
    per_connection = collections.Counter(m.connection for m in sink.messages)
    assert max(per_connection.values()) <= 15
    stats = pool.stats()
    assert stats["sent"] == 500 and stats["failed"] == 0
    assert stats["connections_opened"] == len(per_connection)
    assert stats["queued"] == stats["in_flight"] == 0


def test_rate_limit_holds_in_every_window(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=5, rate_limit=5, rate_delta=1.0)
    futures = [pool.submit(RAW, Envelope("a@x.org", f"r{i}@x.org")) for i in range(16)]
    for future in futures:
        future.result(timeout=30)
    times = sorted(m.received_at for m in sink.messages)
    assert len(times) == 16
    # Any 6 consecutive MAIL FROMs span at least one second, less an allowance for the
    # command's trip from the limiter to this in-process server, which shares the GIL
    # (5 ms switch interval) with the pool's threads.
    spans = [times[i + 5] - times[i] for i in range(len(times) - 5)]
    assert min(spans) >= 0.95, spans
    assert times[-1] - times[0] < 4.5  # and the limiter does not dawdle


class GateSink(Sink):
    """Holds every DATA reply until the test opens the gate."""

    gate: threading.Event

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        return await super().handle_DATA(server, session, envelope)


def test_is_idle_and_on_idle(make_pool: Callable[..., SMTPPool]) -> None:
    sink = GateSink().start()
    sink.gate = threading.Event()
    calls: list[bool] = []
    try:
        pool = make_pool(sink, max_connections=3, on_idle=lambda: calls.append(True))
        assert pool.is_idle()
        futures = [pool.submit(RAW, Envelope("a@x.org", "b@x.org")) for _ in range(3)]
        assert not pool.is_idle()
        time.sleep(0.3)
        assert not pool.is_idle() and calls == []
        assert "in flight 3, queued 0 | connections 3 busy, 0 idle" in repr(pool)
        sink.gate.set()
        for future in futures:
            future.result(timeout=10)
        # A future completes when its reply is read, just before its slot is freed (and
        # on_idle called) and its connection put back: wait for those to follow.
        assert wait_until(lambda: pool.is_idle() and len(calls) == 3)  # once per freed slot
        assert wait_until(
            lambda: "in flight 0, queued 0 | connections 0 busy, 3 idle" in repr(pool)
        )
    finally:
        sink.stop()


def test_on_idle_feeds_the_pool_from_a_caller_queue(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    backlog = collections.deque(RAW.replace(b"b@x.org", f"u{i}@x.org".encode()) for i in range(100))
    done = threading.Event()
    lock = threading.Lock()

    def feed() -> None:
        with lock:
            while pool.is_idle() and backlog:
                pool.submit(backlog.popleft())
            if not backlog and pool.stats()["in_flight"] <= 1:
                done.set()

    pool = make_pool(sink, max_connections=3, on_idle=feed)
    feed()
    assert done.wait(30)
    wait_until(lambda: len(sink.messages) >= 100, 10)
    assert len(sink.messages) == 100 and not backlog


def test_on_idle_errors_are_logged_and_harmless(
    smtpd: SinkFactory, caplog: pytest.LogCaptureFixture, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()

    def broken() -> None:
        raise RuntimeError("callback bug")

    pool = make_pool(sink, max_connections=1, on_idle=broken)
    for _ in range(3):
        pool.send(RAW)
    # on_idle runs just after the future completes
    wait_until(lambda: caplog.text.count("on_idle callback failed") >= 3)
    assert caplog.text.count("on_idle callback failed") == 3
    assert len(sink.messages) == 3


def test_server_dropping_idle_connections_is_invisible(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=1, retries=0)  # the stale check needs no retry
    pool.send(RAW)
    assert sink.drop_connections() == 1
    time.sleep(0.1)
    pool.send(RAW)
    assert len(sink.messages) == 2 and sink.connections_opened == 2
    assert pool.stats()["retried"] == 0 and pool.stats()["connections_retired"] == 1


class FirstMailRefused(Sink):
    """Answers the first MAIL FROM it ever sees with ``refusal``, then behaves."""

    def __init__(self, refusal: str) -> None:
        super().__init__()
        self.refusal: str | None = refusal

    async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def, override]
        refusal, self.refusal = self.refusal, None
        if refusal is not None:
            return refusal
        return await super().handle_MAIL(server, session, envelope, address, options)


def test_421_to_the_first_mail_is_retried_once(make_pool: Callable[..., SMTPPool]) -> None:
    sink = FirstMailRefused("421 4.7.0 too busy, come back later").start()
    try:
        pool = make_pool(sink, max_connections=1)
        result = pool.send(message(1))
        assert result.accepted == ["user1@x.org"]
        assert message_ids(sink) == ["<m1@x.org>"]
        assert pool.stats()["retried"] == 1 and sink.connections_opened == 2
    finally:
        sink.stop()


def test_drop_after_final_dot_is_delivery_unknown_and_not_retried(
    scripted: Callable[..., ScriptedServer], make_pool: Callable[..., SMTPPool]
) -> None:
    server = scripted([*up_to_data(), send(b"354 go\r\n"), expect_data(), close()])
    pool = make_pool(server, max_connections=1, retries=3)
    with pytest.raises(ConnectError) as info:
        pool.send(RAW)
    assert info.value.delivery_unknown
    assert pool.stats()["retried"] == 0 and pool.stats()["failed"] == 1


def test_generator_consumed_by_a_failed_attempt_is_not_replayed(
    scripted: Callable[..., ScriptedServer], make_pool: Callable[..., SMTPPool]
) -> None:
    from ..servers import expect

    server = scripted([*up_to_data(), send(b"354 go\r\n"), expect(b"chunk"), close()])
    pool = make_pool(server, max_connections=1, retries=3)
    chunks = iter([b"chunk one\r\n"] * 20000)
    with pytest.raises(ConnectError) as info:
        pool.send(chunks, Envelope("a@x.org", "b@x.org"))
    assert not info.value.delivery_unknown and pool.stats()["retried"] == 0


def pipe_with(data: bytes) -> tuple[int, threading.Thread]:
    """The read end of a pipe (a file that cannot be rewound) a thread fills with data."""
    read_end, write_end = os.pipe()

    def fill() -> None:
        with os.fdopen(write_end, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=fill, daemon=True)
    writer.start()
    return read_end, writer


def test_a_pipe_is_read_by_the_one_file_reader(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    """A file that cannot be rewound is read and chunked where every file is (it was
    chunked by the pool first, then taken for an iterable of chunks): it arrives whole,
    and one opened in text mode gets the files' error, not the iterables'."""
    sink = smtpd()
    pool = make_pool(sink, max_connections=1)
    body = RAW + b"line\r\n" * 50_000  # several chunks
    read_end, writer = pipe_with(body)
    with os.fdopen(read_end, "rb") as pipe:
        pool.send(pipe, Envelope("a@x.org", "b@x.org"))
    writer.join(5)
    assert sink.messages[-1].data == body
    read_end, writer = pipe_with(RAW)
    with os.fdopen(read_end, "r") as text, pytest.raises(TypeError, match="binary mode"):
        pool.send(text, Envelope("a@x.org", "b@x.org"))
    writer.join(5)


def test_bytes_are_replayed_after_a_drop_mid_data(
    scripted: Callable[..., ScriptedServer], make_pool: Callable[..., SMTPPool]
) -> None:
    from ..servers import expect, expect_eof

    big = RAW + (b"x" * 998 + b"\r\n") * 20_000  # 20 MB: the hang-up comes long before the end
    first = [*up_to_data(), send(b"354 go\r\n"), expect(b"From"), close()]
    second = [
        *up_to_data(),
        send(b"354 go\r\n"),
        expect_data(),
        send(b"250 queued\r\n"),
        expect_eof(),
    ]
    server = scripted(first, second)
    pool = make_pool(server, max_connections=1, retries=1)
    assert pool.send(big, Envelope("a@x.org", "b@x.org")).response == "250 queued"
    assert pool.stats()["retried"] == 1


def test_verify(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool], client_tls: dict[str, Any]
) -> None:
    sink = smtpd(tls="starttls", credentials={"u": "p"})
    assert make_pool(sink, host="localhost", tls=client_tls, auth=("u", "p")).verify() is True
    assert sink.login_attempts[-1] == ("CRAM-MD5", "u", True)
    wait_until(lambda: sink.active_connections == 0)  # the sink sees the QUIT asynchronously
    assert sink.active_connections == 0  # verify() used, and released, its own connection
    with pytest.raises(AuthenticationError) as info:
        make_pool(sink, host="localhost", tls=client_tls, auth=("u", "bad")).verify()
    assert info.value.response_code == 535
    with pytest.raises(TLSError):
        make_pool(sink, host="localhost", auth=("u", "p")).verify()  # CA not trusted
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectError):
            make_pool(host="127.0.0.1", port=unused.getsockname()[1]).verify()


def test_throttling_reply_pauses_new_messages(make_pool: Callable[..., SMTPPool]) -> None:
    sink = FirstMailRefused("451 4.7.1 slow down please").start()
    try:
        pool = make_pool(sink, max_connections=1)
        with pytest.raises(EnvelopeError) as info:
            pool.send(RAW)
        assert info.value.temporary
        refused_at = time.monotonic()
        pool.send(RAW)
        assert sink.messages[0].received_at - refused_at >= 0.9
    finally:
        sink.stop()


def test_connections_are_retired_after_max_messages_and_ttl(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=1, max_messages=3)
    for _ in range(7):
        pool.send(RAW)
    assert [
        n for _, n in sorted(collections.Counter(m.connection for m in sink.messages).items())
    ] == [3, 3, 1]
    ttl_sink = smtpd()
    pool = make_pool(ttl_sink, max_connections=1, connection_ttl=0.3)
    pool.send(RAW)
    pool.send(RAW)
    time.sleep(0.4)
    pool.send(RAW)
    assert [m.connection for m in ttl_sink.messages] == [1, 1, 2]


def test_idle_connections_are_closed_after_idle_timeout(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=2, idle_timeout=0.3)
    pool.send(RAW)
    assert sink.active_connections == 1
    wait_until(lambda: sink.active_connections == 0 and pool.stats()["connections_retired"])
    assert sink.active_connections == 0
    assert pool.stats()["connections_retired"] == 1
    pool.send(RAW)  # and the pool still works
    assert sink.connections_opened == 2


def test_a_dial_that_raises_fails_its_message_and_strands_nothing(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    broken = [True]

    def get_socket(options: Any) -> Any:
        if broken.pop() if broken else False:
            raise RuntimeError("a bug in get_socket")
        return None  # dial normally

    pool = make_pool(sink, max_connections=1, get_socket=get_socket)
    with pytest.raises(RuntimeError, match="a bug in get_socket"):
        pool.send(RAW, timeout=10)
    assert pool.stats()["in_flight"] == 0 and pool.stats()["failed"] == 1
    pool.send(RAW, timeout=10)  # the worker, its dial count and the limit are intact
    assert len(sink.messages) == 1
    assert wait_until(lambda: pool._workers.running == 0)
    assert (pool._connections.open, pool._connections.dialing, len(pool._connections.idle)) == (
        1,
        0,
        1,
    )


def test_an_idle_connection_whose_socket_broke_is_replaced(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=1)
    pool.send(RAW)
    [connection] = pool._connections.idle.connections()
    assert connection._transport.sock is not None
    connection._transport.sock.close()  # fileno() is now -1: select() raises ValueError
    pool.send(RAW, timeout=10)
    assert pool.stats()["connections_opened"] == 2 and len(sink.messages) == 2


@pytest.mark.parametrize("wait", [True, False])
def test_close_with_200_queued_never_hangs(make_pool: Callable[..., SMTPPool], wait: bool) -> None:
    class SlowSink(Sink):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            await asyncio.sleep(0.01)
            return await super().handle_DATA(server, session, envelope)

    sink = SlowSink().start()
    try:
        pool = make_pool(sink, max_connections=2)
        futures = [pool.submit(RAW) for _ in range(200)]
        start = time.monotonic()
        pool.close(wait=wait)
        assert time.monotonic() - start < 30
        wait_until(lambda: all(f.done() for f in futures), 30)
        assert all(f.done() for f in futures)
        closed = [f for f in futures if isinstance(f.exception(), PoolClosedError)]
        sent = [f for f in futures if f.exception() is None]
        assert len(closed) + len(sent) == 200
        if wait:
            assert len(sent) == 200 and len(sink.messages) == 200
        else:
            assert len(closed) >= 150 and len(sink.messages) == len(sent)
        with pytest.raises(PoolClosedError):
            pool.submit(RAW)
    finally:
        sink.stop()


def test_close_from_on_idle_with_wait_is_refused(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    seen: list[BaseException] = []

    def close_now() -> None:
        try:
            pool.close()
        except RuntimeError as exc:
            seen.append(exc)

    pool = make_pool(sink, max_connections=1, on_idle=close_now)
    pool.send(RAW)
    wait_until(lambda: seen)
    assert seen and "wait for itself" in str(seen[0])


def test_context_manager_quits_connections(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with SMTPPool(host=sink.host, port=sink.port, max_connections=2) as pool:
        pool.send(RAW)
    assert pool.stats()["connections_retired"] == 1
    wait_until(lambda: sink.active_connections == 0)
    assert sink.active_connections == 0


def test_envelopes_are_derived_and_bcc_is_not_transmitted(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink)
    raw = (
        b"From: a@x.org\r\nTo: b@x.org\r\nBcc: hidden@x.org,\r\n other@x.org\r\n"
        b"Subject: raw\r\n\r\nBcc: this line is body text\r\n"
    )
    pool.send(raw)
    msg = message(7)
    msg["Bcc"] = "secret@x.org"
    pool.send(msg)
    resent = message(8)
    resent["Resent-Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    resent["Resent-From"] = "fwd@x.org"
    resent["Resent-To"] = "new@x.org"
    pool.send(resent)
    first, second, third = sink.messages
    assert first.rcpt_tos == ("b@x.org", "hidden@x.org", "other@x.org")
    assert b"hidden" not in first.data and b"other@" not in first.data
    assert first.data.endswith(b"\r\nBcc: this line is body text\r\n")
    assert second.rcpt_tos == ("user7@x.org", "secret@x.org") and b"secret" not in second.data
    assert third.mail_from == "fwd@x.org" and third.rcpt_tos == ("new@x.org",)
    with pytest.raises(ValueError, match="explicit envelope"):
        pool.submit(iter([b"x"]))
    with pytest.raises(ValueError, match="no From"):
        pool.submit(b"To: b@x.org\r\n\r\nno sender\r\n")


def test_send_many_streams_in_order_with_bounded_pending(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd(reject_recipients=["bad@x.org"])
    pool = make_pool(sink, max_connections=3)
    produced = 0
    most_ahead = 0
    consumed = 0

    def generate() -> Iterator[tuple[bytes, Envelope]]:
        nonlocal produced, most_ahead
        for i in range(600):
            produced += 1
            most_ahead = max(most_ahead, produced - consumed)
            yield RAW, Envelope("a@x.org", "bad@x.org" if i % 100 == 0 else f"u{i}@x.org")

    outcomes = []
    for outcome in pool.send_many(generate(), window=12):
        consumed += 1
        outcomes.append(outcome)
    assert len(outcomes) == 600 and most_ahead <= 13
    failures = [i for i, o in enumerate(outcomes) if isinstance(o, SMTPError)]
    assert failures == list(range(0, 600, 100))  # input order preserved
    assert all(isinstance(outcomes[i], EnvelopeError) for i in failures)
    assert len(sink.messages) == 594


@pytest.mark.parametrize(
    ("extensions", "stack_messages", "expected"),
    [
        (["PIPELINING", "CHUNKING"], 1, 8),
        (["PIPELINING", "CHUNKING"], 4, 8),
        (["PIPELINING", "CHUNKING"], 16, 32),
        (["PIPELINING"], 16, 8),  # no CHUNKING: nothing stacks
    ],
)
def test_send_many_default_window_feeds_a_stack(
    smtpd: SinkFactory,
    make_pool: Callable[..., SMTPPool],
    extensions: list[str],
    stack_messages: int,
    expected: int,
) -> None:
    """The default window is per connection 8, or twice stack_messages once the
    connections stack transactions: a stacking connection must find a stack's worth
    queued behind the one it is writing; others need no more than 8."""
    sink = smtpd(extensions=extensions)
    pool = make_pool(sink, max_connections=2, stack_messages=stack_messages)
    produced = consumed = most_ahead = 0

    def generate() -> Iterator[bytes]:
        nonlocal produced, most_ahead
        for _ in range(300):
            produced += 1
            most_ahead = max(most_ahead, produced - consumed)
            yield RAW

    for _ in pool.send_many(generate()):
        consumed += 1
    assert consumed == 300 and len(sink.messages) == 300
    assert most_ahead == 2 * expected  # max_connections=2


def test_send_many_sleeps_through_half_a_window(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller whose oldest outcome is not in sleeps until the middle of the window has
    settled: it wakes about once per half window, not once per outcome, so the pool's
    threads are not interrupted for every message."""
    sink = smtpd(extensions=["PIPELINING"])
    pool = make_pool(sink, max_connections=2)
    sleeps = 0
    completion = pool_module.Completion
    wait, outcome = completion.wait, completion.outcome

    def counted(method: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(self: Any) -> Any:
            nonlocal sleeps
            sleeps += not self.settled
            return method(self)

        return call

    monkeypatch.setattr(completion, "wait", counted(wait))
    monkeypatch.setattr(completion, "outcome", counted(outcome))
    outcomes = list(pool.send_many([RAW] * 400, window=16))
    assert len(outcomes) == 400 and all(isinstance(o, SendResult) for o in outcomes)
    assert len(sink.messages) == 400
    print(f"\ncaller slept {sleeps} times for 400 outcomes")
    assert sleeps <= 400 // 3  # here about 60; waking for each unsettled outcome: over 200


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_send_many_over_ten_thousand(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd(extensions=["PIPELINING"])
    pool = make_pool(sink, max_connections=5, max_messages=1000)
    envelope = Envelope("a@x.org", "b@x.org")
    samples = {}
    count = 0
    for outcome in pool.send_many((RAW, envelope) for _ in range(10_000)):
        assert isinstance(outcome, SendResult)
        count += 1
        if count % 1000 == 0:
            sink.messages.clear()  # the sink's own record is not the pool's memory
            samples[count] = rss_bytes()
    assert count == 10_000 and pool.stats()["sent"] == 10_000
    growth = samples[10_000] - samples[2_000]
    print(
        f"\nRSS after 2,000: {samples[2_000] / 2**20:.1f} MB; after 10,000: "
        f"{samples[10_000] / 2**20:.1f} MB"
    )
    assert growth < 4 * 2**20  # flat: nothing accumulates per message


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running
def test_forked_child_never_reuses_the_parent_connection(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]
) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=1)
    pool.send(RAW)  # a warm connection in the parent
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            pool.send(RAW)
            pool.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    pool.send(RAW)  # the parent's connection was left alone
    assert [m.connection for m in sink.messages] == [1, 2, 1]


def test_repr_and_stats_shape(smtpd: SinkFactory, make_pool: Callable[..., SMTPPool]) -> None:
    sink = smtpd()
    pool = make_pool(sink, max_connections=2)
    pool.send(RAW)
    assert repr(pool) == (
        f"<SMTPPool 127.0.0.1:{sink.port} [in flight 0, queued 0 | connections 0 busy, 1 idle]>"
    )
    assert pool.stats() == {
        "sent": 1,
        "failed": 0,
        "retried": 0,
        "connections_opened": 1,
        "connections_retired": 0,
        "connections_failed": 0,
        "tls_fallbacks": 0,
        "queued": 0,
        "in_flight": 0,
        "connection_limit": 2,
    }


def test_logger_option(
    smtpd: SinkFactory, make_pool: Callable[..., SMTPPool], caplog: pytest.LogCaptureFixture
) -> None:
    sink = smtpd()
    logger = logging.getLogger("myapp.mail")
    caplog.set_level(logging.INFO, logger="myapp.mail")
    make_pool(sink, logger=logger).send(RAW)
    assert any(r.name == "myapp.mail" and "connected to" in r.getMessage() for r in caplog.records)


def test_from_url_sends(smtpd: SinkFactory) -> None:
    sink = smtpd(credentials={"u@x.org": "p:w"}, auth_require_tls=False)
    url = f"smtp://u%40x.org:p%3Aw@127.0.0.1:{sink.port}/?maxConnections=2&socketTimeout=5000"
    with SMTPPool.from_url(url, max_messages=7) as pool:
        assert (pool.options.max_connections, pool.options.socket_timeout) == (2, 5.0)
        assert pool.options.max_messages == 7
        pool.send(RAW)
    assert sink.login_attempts == [("CRAM-MD5", "u@x.org", True)] and len(sink.messages) == 1


def test_queued_messages_are_pipelined_behind_each_other(
    scripted: Callable[..., ScriptedServer], make_pool: Callable[..., SMTPPool]
) -> None:
    from ..servers import expect_eof, two_pipelined_messages

    server = scripted([*two_pipelined_messages(), expect_eof()])
    pool = make_pool(server, max_connections=1)
    first, second = pool.submit(RAW), pool.submit(RAW)  # queued while the worker dials
    assert first.result(10).response == "250 queued 1"
    assert second.result(10).response == "250 queued 2"
    pool.close()
    assert pool.stats()["connections_opened"] == 1


def test_date_and_message_id_are_added_to_messages_without_them(smtpd: Any) -> None:
    """An EmailMessage without Date or Message-ID went out without them; Django,
    Flask-Mail and Nodemailer add both, and spam filters penalise their absence."""
    sink = smtpd()
    bare = EmailMessage()
    bare["From"], bare["To"], bare["Subject"] = "app@bücher.example", "u@x.org", "hi"
    bare.set_content("hello")
    dated = EmailMessage()
    dated["From"], dated["To"], dated["Date"] = (
        "app@x.org",
        "u@x.org",
        "Mon, 1 Jan 2024 00:00:00 +0000",
    )
    dated["Message-ID"] = "<mine@x.org>"
    dated.set_content("hello")
    raw = b"From: app@x.org\r\nTo: u@x.org\r\nSubject: raw\r\n\r\nas it is\r\n"
    with SMTPPool(host=sink.host, port=sink.port) as pool:
        pool.send(bare)
        pool.send(dated)
        pool.send(raw)
    with SMTPPool(host=sink.host, port=sink.port, add_missing_headers=False) as pool:
        pool.send(bare)
    heads = [m.data.split(b"\r\n\r\n")[0] + b"\r\n" for m in sink.messages]
    assert [h.count(b"\r\nDate: ") for h in heads] == [1, 1, 0, 0]
    assert [h.count(b"\r\nMessage-ID: ") for h in heads] == [1, 1, 0, 0]
    assert b"@xn--bcher-kva.example>" in heads[0]  # the From domain, in ASCII
    assert b"Message-ID: <mine@x.org>" in heads[1] and b"2024" in heads[1]
    assert sink.messages[2].data == raw  # raw bytes never touched
    assert bare["Date"] is None and bare["Message-ID"] is None  # the caller's copy neither


def test_pool_timeout_bounds_the_wait_while_close_drains() -> None:
    """A pool closed before its first dial (``with SMTPPool(...) as pool: pool.submit``)
    still ends a message's wait for a connection at ``pool_timeout``: the housekeeper
    that enforces it was never started once close() had begun, so the message waited
    for close()'s own 60 s and failed as closed."""
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        started = time.monotonic()
        with SMTPPool(host="127.0.0.1", port=unused.getsockname()[1], pool_timeout=1) as pool:
            future = pool.submit(RAW, Envelope("a@x.org", "b@x.org"))
        error = future.exception(timeout=1)
    assert isinstance(error, ConnectError) and "pool_timeout" in str(error), error
    assert time.monotonic() - started < 10
