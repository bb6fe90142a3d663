"""SMTPPool: persistent, rate-limited SMTP connections behind a thread pool.

Submitted messages wait in the pool's FIFO; up to ``max_connections`` worker loops (on a
``ThreadPoolExecutor``) drain it, each pipelining the next waiting message onto its
connection when it can.  Idle connections wait in a LIFO pre-filled with ``None`` slots
(urllib3's design: the queue is the capacity limit); a worker takes one, replaces it when
stale, sends, and puts it back in a ``finally``, so each connection serves one thread at
a time and every take has exactly one put.  Every submitted message gets a
:class:`~concurrent.futures.Future` that always completes (``send_many`` uses a lighter
one-shot completion of its own).  Network I/O never happens while a lock is held.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, Protocol, cast

from .config import Options
from .connection import SMTPConnection, quit_all
from .envelope import Envelope, SendResult, pair_with_envelope
from .errors import ConnectError, PoolClosedError, SMTPError, SMTPTimeoutError
from .message import CHUNK_BYTES, MessageInput
from .ratelimit import ConnectionLease, Limiter, RateLimiter

__all__ = ["SMTPPool"]

#: Pause before the first retry of a message; doubles per retry up to MAX_RETRY_BACKOFF.
RETRY_BACKOFF = 0.2
MAX_RETRY_BACKOFF = 2.0
#: Pause after a throttling reply (421, 454, 4xx to MAIL); doubles while they continue.
THROTTLE_PAUSE = 1.0
MAX_THROTTLE_PAUSE = 30.0
#: Consecutive failed connection attempts after which dialling stops for COOL_DOWN.
CONNECT_FAILURE_LIMIT = 3
COOL_DOWN = 10.0
#: Longest wait for a free slot in the idle LIFO (slots are only ever held briefly).
SLOT_TIMEOUT = 30.0
#: How often idle connections are checked for ``idle_timeout``, at most.
REAP_INTERVAL = 1.0
#: send_many's default window, per connection: each connection has about two messages
#: on the wire when pipelining, and half a window must still be queued behind them
#: while the caller sleeps (see send_many).
SEND_MANY_WINDOW = 8

EnvelopeInput = Envelope | Mapping[str, Any]
_BYTES_LIKE = (bytes, bytearray, memoryview, str, Message)


class _Idle(NamedTuple):
    connection: SMTPConnection
    since: float


class _Payload:
    """A message offered to one or more attempts: rewound, or refused once consumed."""

    def __init__(self, message: MessageInput) -> None:
        self.message = message
        self.rewind_to: int | None = None
        self.started = False
        if not isinstance(message, _BYTES_LIKE) and hasattr(message, "seekable"):
            try:
                file = cast(BinaryIO, message)
                if file.seekable():
                    self.rewind_to = file.tell()
            except (OSError, ValueError):
                pass

    @property
    def replayable(self) -> bool:
        return (
            isinstance(self.message, _BYTES_LIKE) or self.rewind_to is not None or not self.started
        )

    def attempt(self) -> MessageInput:
        message = self.message
        if isinstance(message, _BYTES_LIKE):
            return message
        if self.rewind_to is not None:
            cast(BinaryIO, message).seek(self.rewind_to)
            return message
        if hasattr(message, "read"):
            read = functools.partial(cast(BinaryIO, message).read, CHUNK_BYTES)
            return self._tracked(iter(read, b""))
        return self._tracked(message)

    def _tracked(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.started = True
            yield chunk


class _Settleable(Protocol):
    """What a worker needs of a message's completion: a Future, or send_many's _Completion."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: SendResult) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...


class _Completion:
    """send_many's one-shot completion: settled once, waited for once, never cancelled.

    A lock held until the outcome is in; a Future builds a Condition and takes its lock
    three times, about eight times the cost, which shows at thousands of messages a second.
    """

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._outcome: SendResult | BaseException | None = None

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: SendResult | BaseException | None) -> None:
        if self._outcome is None:  # the first settlement counts, as with a Future
            self._outcome = result
            self._done.release()

    set_exception = set_result

    @property
    def settled(self) -> bool:
        return self._outcome is not None

    def wait(self) -> None:
        with self._done:
            pass

    def outcome(self) -> SendResult | SMTPError:
        """Wait for the outcome; an error that is not an SMTPError is raised."""
        self.wait()
        outcome = self._outcome
        if isinstance(outcome, BaseException) and not isinstance(outcome, SMTPError):
            raise outcome
        assert outcome is not None
        return outcome


@dataclass(eq=False, slots=True)
class _Job:
    payload: _Payload
    envelope: Envelope
    future: _Settleable
    retries_used: int = 0
    stale_allowance: int = 1  # a reused connection found dead costs no retry
    backoff: float = 0.0  # seconds to wait before the next attempt


def _is_retryable(error: SMTPError) -> bool:
    """Only failures that prove the server did not take the message: connection-level
    ones (421 included) before the end of the data, never a refusal or a lost verdict."""
    return isinstance(error, (ConnectError, SMTPTimeoutError)) and not error.delivery_unknown


def _is_throttling(error: SMTPError) -> bool:
    code = error.response_code
    if code in (421, 454):
        return True
    return code is not None and 400 <= code < 500 and (error.command or "").startswith("MAIL")


_POOLS: weakref.WeakSet[SMTPPool] = weakref.WeakSet()
_worker = threading.local()  # .active is True in the pool's worker threads


class SMTPPool:
    """A thread-safe SMTP transport: ``send``, ``submit``, ``send_many``, ``verify``.

    Takes the options of DESIGN.md as keywords (see :class:`smtppool.config.Options`),
    plus ``service=`` for a well-known provider, and ``rate_limiter=``: any
    :class:`~smtppool.ratelimit.Limiter` in place of the in-process one that
    ``rate_limit``/``rate_delta`` configure (for example a limit shared between
    processes, :class:`smtppool.contrib.redis_limiter.RedisLimiter`; one per pool, since
    closing the pool closes it).  Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        options: Options | None = None,
        rate_limiter: Limiter | None = None,
        **settings: Any,
    ) -> None:
        if options is None:
            options = Options.from_settings(**settings)
        elif settings:
            options = options.replace(**settings)
        if rate_limiter is not None:
            if not isinstance(rate_limiter, Limiter):
                raise TypeError("rate_limiter must implement smtppool.ratelimit.Limiter")
            if options.rate_limit is not None:
                raise ValueError("give rate_limit or rate_limiter, not both")
        self.options = options
        self._shared_limiter = rate_limiter
        self._log = self.options.logger or logging.getLogger("smtppool")
        self._setup()
        _POOLS.add(self)
        self._finalizer = weakref.finalize(self, _close_idle, self._idle)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> SMTPPool:
        """Build a pool from ``smtp://``, ``smtps://`` or ``lmtp://user:pw@host:port/?opts``."""
        return cls(url=url, **overrides)

    def _setup(self) -> None:
        """(Re)create every piece of runtime state; also used in a forked child."""
        opts = self.options
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(opts.max_connections, thread_name_prefix="smtppool")
        self._idle: queue.LifoQueue[_Idle | None] = queue.LifoQueue(opts.max_connections)
        for _ in range(opts.max_connections):
            self._idle.put(None)
        self._limiter: Limiter = self._shared_limiter or RateLimiter(
            opts.rate_limit, opts.rate_delta
        )
        self._leases: dict[SMTPConnection, ConnectionLease] = {}
        self._waiting: deque[_Job] = deque()  # submitted and not yet started, in order
        self._workers = 0  # worker loops running (at most max_connections)
        self._closed = False
        self._queued = self._in_flight = self._busy = 0
        self._counts = dict.fromkeys(
            ("sent", "failed", "retried", "connections_opened", "connections_retired"), 0
        )
        self._connect_failures = 0
        self._last_connect_error: SMTPError | None = None
        self._dial_again_at = 0.0
        self._throttle_pause = THROTTLE_PAUSE
        self._stop_reaper = threading.Event()
        self._reaper: threading.Thread | None = None

    def __repr__(self) -> str:
        with self._idle.mutex:
            idle = sum(1 for item in self._idle.queue if item is not None)
        with self._lock:
            return (
                f"<SMTPPool {self.options.host}:{self.options.port} "
                f"[in flight {self._in_flight}, queued {self._queued} | "
                f"connections {self._busy} busy, {idle} idle]>"
            )

    # -- public API --------------------------------------------------------------------

    def submit(
        self, message: MessageInput, envelope: EnvelopeInput | None = None
    ) -> Future[SendResult]:
        """Queue a message and return at once; the future gets a SendResult or SMTPError.

        :raises PoolClosedError: the pool is closed.
        :raises ValueError: no envelope given and none can be derived from the message.
        """
        future: Future[SendResult] = Future()
        self._enqueue(message, envelope, future)
        return future

    def _enqueue(
        self, message: MessageInput, envelope: EnvelopeInput | None, done: _Settleable
    ) -> None:
        message, env = pair_with_envelope(message, envelope)
        job = _Job(_Payload(message), env, done)
        with self._lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._waiting.append(job)
            self._queued += 1
            spawn = self._workers < self.options.max_connections
            if spawn:
                self._workers += 1
        if spawn:
            self._executor.submit(self._work_loop)

    def send(
        self,
        message: MessageInput,
        envelope: EnvelopeInput | None = None,
        *,
        timeout: float | None = None,
    ) -> SendResult:
        """Send one message and wait for its result.

        :raises SMTPError: the subclass that says what went wrong.
        """
        return self.submit(message, envelope).result(timeout)

    def send_many(
        self,
        messages: Iterable[MessageInput | tuple[MessageInput, EnvelopeInput]],
        *,
        window: int | None = None,
    ) -> Iterator[SendResult | SMTPError]:
        """Send a stream of messages, yielding one outcome per message in input order.

        At most ``window`` messages (default ``8 * max_connections``) are pending at once,
        so any iterable, a generator of millions included, streams in bounded memory.
        Items are messages or ``(message, envelope)`` pairs.

        When the oldest outcome is not in yet, the caller sleeps until the middle of the
        window has settled rather than waking for each outcome: one wake-up per half a
        window, while the other half keeps every connection's stream fed.
        """
        limit = window or SEND_MANY_WINDOW * self.options.max_connections
        pending: deque[_Completion] = deque()
        for item in messages:
            message, envelope = item if isinstance(item, tuple) else (item, None)
            done = _Completion()
            self._enqueue(message, envelope, done)
            pending.append(done)
            if len(pending) >= limit:
                if not pending[0].settled:
                    pending[(limit - 1) // 2].wait()
                yield pending.popleft().outcome()
        while pending:
            yield pending.popleft().outcome()

    def is_idle(self) -> bool:
        """True while fewer than ``max_connections`` messages are queued or in flight."""
        with self._lock:
            return self._queued + self._in_flight < self.options.max_connections

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: sent, failed, retried, connections opened and retired,
        queued, in flight."""
        with self._lock:
            return {**self._counts, "queued": self._queued, "in_flight": self._in_flight}

    def verify(self) -> bool:
        """Check the settings on a fresh connection outside the pool's slots: connect,
        EHLO, TLS, AUTH, QUIT.

        :raises SMTPError: the precise failure (ConnectError, TLSError, AuthenticationError...).
        """
        connection = SMTPConnection(options=self.options)
        try:
            connection.connect()
            connection.login()
        finally:
            connection.quit()
        return True

    def close(self, wait: bool = True) -> None:
        """Stop taking messages and release every connection; never hangs.

        ``wait=True`` delivers what is queued, then QUITs.  ``wait=False`` fails queued
        messages with :class:`PoolClosedError`, lets in-flight ones finish in the
        background and closes idle connections at once.

        :raises RuntimeError: ``wait=True`` from one of the pool's own threads (such as an
            ``on_idle`` callback), which would wait for itself.
        """
        if wait and getattr(_worker, "active", False):
            raise RuntimeError("close(wait=True) from a pool thread would wait for itself")
        with self._lock:
            self._closed = True
            dropped: list[_Job] = []
            if not wait:
                dropped, self._waiting = list(self._waiting), deque()
                self._queued -= len(dropped)
        if wait:
            self._executor.shutdown(wait=True)
        else:
            for job in dropped:
                _settle(job.future, PoolClosedError("the pool was closed"))
            self._executor.shutdown(wait=False)
        self._limiter.close()
        self._stop_reaper.set()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(SLOT_TIMEOUT)
        self._drain_idle(polite=wait)

    def __enter__(self) -> SMTPPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the worker --------------------------------------------------------------------

    def _work_loop(self) -> None:
        """A worker: send waiting messages until there are none, then end."""
        _worker.active = True
        while True:
            with self._lock:
                job = self._take_next()
                if job is None:  # checked and given up under one lock: nothing is stranded
                    self._workers -= 1
                    return
            if not job.future.set_running_or_notify_cancel():  # cancelled while queued
                self._finish(job, None)
                continue
            todo = deque([job])
            while todo:  # retries stay with this worker, which works while close() drains too
                job = todo.popleft()
                if job.backoff:
                    time.sleep(job.backoff)
                todo.extend(self._work(job))

    def _take_next(self) -> _Job | None:
        """Start the oldest waiting message (caller holds the lock)."""
        if not self._waiting:
            return None
        job = self._waiting.popleft()
        self._queued -= 1
        self._in_flight += 1
        return job

    def _steal(
        self, connection: SMTPConnection, handed: deque[_Job]
    ) -> tuple[Envelope, MessageInput] | None:
        """The next waiting message, for a worker whose connection can pipeline it now."""
        opts = self.options
        if connection.messages_sent + len(handed) >= opts.max_messages:
            return None
        started = connection.connected_at
        if opts.connection_ttl is not None and started is not None:
            if time.monotonic() - started >= opts.connection_ttl:
                return None
        while True:
            with self._lock:
                job = self._take_next()
            if job is None:
                return None
            try:
                allowed = self._limiter.acquire(timeout=0)
            except SMTPError:  # closed, or undecidable: a worker's own acquire will say
                allowed = False
            if not allowed:  # it must wait its turn: leave it for a worker that can
                with self._lock:
                    self._queued += 1
                    self._in_flight -= 1
                    self._waiting.appendleft(job)
                return None
            if job.future.set_running_or_notify_cancel():
                handed.append(job)
                return job.envelope, job.payload.attempt()
            self._finish(job, None)

    def _work(self, job: _Job) -> list[_Job]:
        """Send ``job`` (and whatever the connection can pipeline behind it) on one
        connection; return the jobs to try again."""
        handed: deque[_Job] = deque([job])
        retry: list[_Job] = []
        try:
            slot = self._checkout()
        except BaseException as exc:  # no slot: the message still learns its fate
            self._conclude(job, exc, False, retry)
            return retry
        connection = slot.connection if slot is not None else None
        reused = connection is not None
        try:
            if connection is None:
                connection = self._open()
            else:
                self._leases[connection].renew()
            self._limiter.acquire()
            carrier = connection
            stream = carrier.send_stream(
                (job.envelope, job.payload.attempt()), lambda: self._steal(carrier, handed)
            )
            for outcome in stream:
                self._conclude(handed.popleft(), outcome, reused, retry)
        except BaseException as exc:  # every handed message learns its fate, whatever happened
            while handed:
                self._conclude(handed.popleft(), exc, reused, retry)
        finally:
            self._checkin(connection)
        return retry

    def _conclude(
        self, job: _Job, outcome: SendResult | BaseException, reused: bool, retry: list[_Job]
    ) -> None:
        """Settle a message, or put it in ``retry`` when the failure proves it was not taken."""
        if isinstance(outcome, SendResult):
            self._finish(job, outcome)
            return
        if isinstance(outcome, SMTPError):
            if _is_throttling(outcome):
                self._throttle(outcome)
            if _is_retryable(outcome) and job.payload.replayable and not self._cooling():
                backoff = self._next_backoff(job, reused)
                if backoff is not None:
                    job.backoff = backoff
                    self._count("retried")
                    self._log.info("retrying a message after %s: %s", outcome.code, outcome.message)
                    retry.append(job)
                    return
        self._finish(job, outcome)

    def _next_backoff(self, job: _Job, reused: bool) -> float | None:
        """Seconds to wait before retrying ``job``, or None when its retries are spent."""
        if reused and job.stale_allowance:
            job.stale_allowance -= 1
            return 0.0
        if job.retries_used < self.options.retries:
            job.retries_used += 1
            return float(min(RETRY_BACKOFF * 2 ** (job.retries_used - 1), MAX_RETRY_BACKOFF))
        return None

    def _finish(self, job: _Job, outcome: SendResult | BaseException | None) -> None:
        """A started job is over: count it and free its slot (one lock round, before the
        caller can see the outcome), settle it, then tell on_idle.  ``outcome`` is None
        for a job cancelled while it waited."""
        with self._lock:
            if isinstance(outcome, SendResult):
                self._throttle_pause = THROTTLE_PAUSE
                self._counts["sent"] += 1
            elif outcome is not None:
                self._counts["failed"] += 1
            self._in_flight -= 1
            has_capacity = self._queued + self._in_flight < self.options.max_connections
        if outcome is not None:
            _settle(job.future, outcome)
        if has_capacity and self.options.on_idle is not None:
            try:
                self.options.on_idle()
            except Exception:
                self._log.exception("on_idle callback failed")

    # -- connections -------------------------------------------------------------------

    def _checkout(self) -> _Idle | None:
        try:
            slot = self._idle.get(timeout=SLOT_TIMEOUT)
        except queue.Empty:
            raise ConnectError("no free connection slot in the pool") from None
        with self._lock:
            self._busy += 1
        if slot is not None:
            try:
                reusable = slot.connection.is_reusable()
            except (OSError, ValueError):  # a socket in a state nobody can use
                reusable = False
            if not reusable:
                self._retire(slot.connection)
                return None
        return slot

    def _checkin(self, connection: SMTPConnection | None) -> None:
        """Give the slot back (exactly once per checkout); retire what cannot be reused."""
        retire = None
        if connection is not None and (self._closed or not connection.is_within_limits()):
            retire, connection = connection, None
        self._idle.put(_Idle(connection, time.monotonic()) if connection is not None else None)
        with self._lock:
            self._busy -= 1
        if retire is not None:
            self._retire(retire)
        elif connection is not None:
            self._start_reaper()

    def _open(self) -> SMTPConnection:
        with self._lock:
            if self._cooling_locked():
                last = self._last_connect_error
                assert last is not None
                raise type(last)(
                    f"not dialling {self.options.host}:{self.options.port} for "
                    f"{self._dial_again_at - time.monotonic():.1f} s after "
                    f"{self._connect_failures} failed attempts; last: {last.message}",
                    code=last.code,
                    response=last.response,
                    response_code=last.response_code,
                    command=last.command,
                )
        lease = self._limiter.lease_connection(self.options.connection_timeout)
        connection = SMTPConnection(options=self.options)
        try:
            connection.connect()
            connection.login()
        except BaseException as exc:
            lease.release()
            if isinstance(exc, (ConnectError, SMTPTimeoutError)):
                self._connect_failed(exc)
            else:
                connection.close()
            raise
        with self._lock:
            self._leases[connection] = lease  # released by _retire
            self._connect_failures = 0
            self._counts["connections_opened"] += 1
        return connection

    def _connect_failed(self, exc: SMTPError) -> None:
        with self._lock:
            self._connect_failures += 1
            self._last_connect_error = exc
            failures = self._connect_failures
            if failures < CONNECT_FAILURE_LIMIT:
                return
            self._dial_again_at = time.monotonic() + COOL_DOWN
        self._log.warning(
            "%s:%s: %d connection attempts failed; pausing new connections for %.0f s",
            self.options.host,
            self.options.port,
            failures,
            COOL_DOWN,
        )

    def _retire(self, *connections: SMTPConnection, polite: bool = True) -> None:
        """Close connections for good (QUIT first when ``polite``, all in one round trip)
        and free their leases."""
        if polite:
            quit_all(connections)
        else:
            for connection in connections:
                connection.close()
        with self._lock:
            leases = [self._leases.pop(connection, None) for connection in connections]
            self._counts["connections_retired"] += len(connections)
        for lease in leases:
            if lease is not None:
                lease.release()

    def _cooling(self) -> bool:
        with self._lock:
            return self._cooling_locked()

    def _cooling_locked(self) -> bool:
        return (
            self._connect_failures >= CONNECT_FAILURE_LIMIT
            and time.monotonic() < self._dial_again_at
        )

    def _throttle(self, error: SMTPError) -> None:
        with self._lock:
            pause = self._throttle_pause
            self._throttle_pause = min(pause * 2, MAX_THROTTLE_PAUSE)
        self._log.warning(
            "server throttles (%s); pausing new messages for %.1f s", error.response, pause
        )
        self._limiter.pause(pause)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # -- idle connections --------------------------------------------------------------

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None or self._closed:
                return
            interval = min(REAP_INTERVAL, self.options.idle_timeout / 4)
            self._reaper = threading.Thread(
                target=_reap_idle,
                args=(weakref.ref(self), self._stop_reaper, interval),
                name="smtppool-reaper",
                daemon=True,
            )
            self._reaper.start()

    def _take_idle(self, expired: Any) -> list[SMTPConnection]:
        """Take the idle connections ``expired(slot)`` selects; put the rest back, in order."""
        slots: list[_Idle | None] = []
        while True:
            try:
                slots.append(self._idle.get_nowait())
            except queue.Empty:
                break
        taken = []
        for slot in reversed(slots):  # back in the same LIFO order
            if slot is not None and expired(slot):
                taken.append(slot.connection)
                slot = None
            self._idle.put(slot)
        return taken

    def _reap(self) -> None:
        limit = self.options.idle_timeout
        now = time.monotonic()
        expired = self._take_idle(lambda slot: now - slot.since >= limit)
        if expired:
            self._log.debug("closing %d connection(s) idle for %.0f s", len(expired), limit)
            self._retire(*expired)

    def _drain_idle(self, *, polite: bool) -> None:
        self._retire(*self._take_idle(lambda slot: True), polite=polite)

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's sockets unread and start afresh."""
        for slot in list(self._idle.queue):
            if slot is not None:
                slot.connection.close()  # closes the child's descriptor only; sends nothing
        self._setup()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_idle, self._idle)


def _settle(future: _Settleable, outcome: SendResult | BaseException) -> None:
    """Complete ``future`` unless it already is (cancelled, or failed by close)."""
    try:
        if isinstance(outcome, SendResult):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)
    except InvalidStateError:
        pass


def _reap_idle(pool_ref: weakref.ref[SMTPPool], stop: threading.Event, interval: float) -> None:
    """Reaper thread: holds the pool only weakly, so an unclosed pool can still be freed."""
    while not stop.wait(interval):
        pool = pool_ref()
        if pool is None:
            return
        try:
            pool._reap()
        except Exception:
            pool._log.exception("closing idle connections failed")
        del pool


def _close_idle(idle: queue.LifoQueue[_Idle | None]) -> None:
    """Garbage-collection safety net: close idle sockets (no I/O, nothing can hang)."""
    while True:
        try:
            slot = idle.get_nowait()
        except queue.Empty:
            return
        if slot is not None:
            slot.connection.close()


def _reinitialise_after_fork() -> None:
    for pool in list(_POOLS):
        pool._after_fork()


os.register_at_fork(after_in_child=_reinitialise_after_fork)
