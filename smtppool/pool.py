"""SMTPPool: persistent, rate-limited SMTP connections behind a thread pool.

Submitted messages wait in the pool's FIFO.  Worker loops on a ``ThreadPoolExecutor``
drain it, never more of them than the working connection limit (``max_connections``,
lowered while the server refuses more: see :mod:`smtppool.pushback`).  A worker takes
the oldest message and a connection for it: an idle one (the most recently used), or
one it dials when the limit and the dial backoff allow.  When neither is possible it
leaves the message to the workers whose connections work; only the last worker waits
for the next dial, and only while no connection is open does a message's wait count
towards ``pool_timeout``.  A worker pipelines further waiting messages onto its
connection when it can, then puts the connection back, so each connection serves one
thread at a time.

Every message has exactly one fate.  A job is queued, taken by a worker, sending (on
the wire), then done; each change happens under the pool's lock, and only a job that
is not on the wire can be withdrawn (by ``send()``'s timeout, ``pool_timeout`` or
``close()``), so a message is never sent after its caller was told it failed.  Network
I/O never happens while the lock is held.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from types import TracebackType
from typing import Any

from .config import Options, describe_options
from .connection import SMTPConnection, quit_all
from .envelope import Envelope, SendResult, pair_with_envelope
from .errors import ConnectError, PoolClosedError, PoolTimeoutError, SMTPError, SMTPTimeoutError
from .idle import IdleConnections, IdleSlot, close_all
from .jobs import DONE, QUEUED, SENDING, TAKEN, Completion, Job, Payload, Settleable, settle
from .message import MessageInput
from .pushback import (
    ConnectionLimit,
    Throttle,
    is_connection_cap,
    is_retryable,
    is_throttling,
)
from .ratelimit import ConnectionLease, Limiter, RateLimiter

__all__ = ["CLOSE_TIMEOUT", "SMTPPool"]

#: How long ``close()`` waits for queued and in-flight messages by default.
CLOSE_TIMEOUT = 60.0
#: Longest single wait on the pool's condition; every wait loop re-checks.
WAIT_STEP = 1.0
#: How often, at most, idle connections are checked for ``idle_timeout`` and waiting
#: messages for ``pool_timeout``.
HOUSEKEEPING_INTERVAL = 1.0
#: send_many's default window, per connection: each connection has about two messages
#: on the wire when pipelining, and half a window must still be queued behind them
#: while the caller sleeps (see send_many).
SEND_MANY_WINDOW = 8

EnvelopeInput = Envelope | Mapping[str, Any]


_POOLS: weakref.WeakSet[SMTPPool] = weakref.WeakSet()
_worker = threading.local()  # .active is True in the pool's worker threads


class SMTPPool:
    """A thread-safe SMTP transport: ``send``, ``submit``, ``send_many``, ``verify``.

    Takes the options below as keywords (``url=`` too), or ``options=`` an
    :class:`~smtppool.config.Options`, and ``rate_limiter=``: any
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
        self._finalizer = weakref.finalize(self, close_all, self._idle)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> SMTPPool:
        """Build a pool from ``smtp://``, ``smtps://`` or ``lmtp://user:pw@host:port/?opts``."""
        return cls(url=url, **overrides)

    def _setup(self) -> None:
        """(Re)create every piece of runtime state; also used in a forked child."""
        opts = self.options
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # jobs, connections, workers moved
        self._executor = ThreadPoolExecutor(opts.max_connections, thread_name_prefix="smtppool")
        self._executor_open = True
        self._limiter: Limiter = self._shared_limiter or RateLimiter(
            opts.rate_limit, opts.rate_delta
        )
        self._leases: dict[SMTPConnection, ConnectionLease] = {}
        self._waiting: deque[Job] = deque()  # queued, oldest first
        self._started: set[Job] = set()  # taken or sending
        self._idle = IdleConnections()
        self._dials: set[SMTPConnection] = set()  # being dialled
        self._in_use: set[SMTPConnection] = set()  # sending or retiring
        self._open = 0  # connections open: idle, sending or retiring
        self._dialing = 0
        self._workers = 0  # worker loops running
        self._connection_limit = ConnectionLimit(opts.max_connections)
        self._throttle = Throttle()
        self._last_dial_error: SMTPError | None = None
        self._cap_warned = False
        self._closed = False  # no new messages
        self._stopping = False  # close(wait=False), or close() timed out: nothing new starts
        self._retire_returns = False  # close() emptied the idle list: retire what comes back
        self._counts = dict.fromkeys(
            (
                "sent",
                "failed",
                "retried",
                "connections_opened",
                "connections_retired",
                "connections_failed",
                "tls_fallbacks",
            ),
            0,
        )
        self._stop_housekeeper = threading.Event()
        self._housekeeper: threading.Thread | None = None

    def __repr__(self) -> str:
        with self._lock:
            idle = len(self._idle)
            limit = self._connection_limit
            capped = f", working limit {limit.limit} of {limit.ceiling}" if limit.capped else ""
            return (
                f"<SMTPPool {self.options.host}:{self.options.port} "
                f"[in flight {len(self._started)}, queued {len(self._waiting)} | "
                f"connections {self._open - idle} busy, {idle} idle{capped}]>"
            )

    # -- public API --------------------------------------------------------------------

    def submit(
        self, message: MessageInput, envelope: EnvelopeInput | None = None
    ) -> Future[SendResult]:
        """Queue a message and return at once; the future gets a SendResult or SMTPError.

        Cancelling the future withdraws the message unless it is already on the wire.

        :raises PoolClosedError: the pool is closed.
        :raises ValueError: no envelope given and none can be derived from the message.
        """
        future: Future[SendResult] = Future()
        self._enqueue(message, envelope, future)
        return future

    def _enqueue(
        self, message: MessageInput, envelope: EnvelopeInput | None, done: Settleable
    ) -> None:
        message, env = pair_with_envelope(message, envelope)
        job = Job(Payload(message), env, done, time.monotonic())
        with self._lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._waiting.append(job)
            self._spawn_locked()

    def send(
        self,
        message: MessageInput,
        envelope: EnvelopeInput | None = None,
        *,
        timeout: float | None = None,
    ) -> SendResult:
        """Send one message and wait for its result (see :meth:`result` for ``timeout``).

        :raises SMTPError: the subclass that says what went wrong.
        """
        return self.result(self.submit(message, envelope), timeout)

    def result(self, future: Future[SendResult], timeout: float | None = None) -> SendResult:
        """Wait for a submitted message's outcome; ``timeout`` bounds the wait.

        When the time runs out while the message still waits its turn, it is withdrawn
        and will never be sent: :class:`PoolTimeoutError` (``delivery_unknown`` False).
        When it is already on the wire, :class:`SMTPTimeoutError` with
        ``delivery_unknown`` True: it may still be delivered.

        :raises SMTPError: the message's own failure, or one of the two above.
        """
        if timeout is not None and not wait_for_futures([future], timeout, FIRST_COMPLETED)[0]:
            withdrawn = PoolTimeoutError(
                f"not sent: still waiting for its turn after {timeout:g} s; withdrawn"
            )
            state = self._withdraw(future, withdrawn)
            # Withdrawn now, or done a moment ago and being settled: the outcome is due.
            due = state != SENDING and wait_for_futures([future], WAIT_STEP)[0]
            if not due:
                raise SMTPTimeoutError(
                    f"no outcome after {timeout:g} s: the message is being sent",
                    delivery_unknown=True,
                )
        return future.result()

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
        pending: deque[Completion] = deque()
        for item in messages:
            message, envelope = item if isinstance(item, tuple) else (item, None)
            done = Completion()
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
            return len(self._waiting) + len(self._started) < self.options.max_connections

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: sent, failed, retried, connections opened, retired and
        failed (dials that did not give a session), ``tls_fallbacks`` (connections that
        went on without the TLS the server offered, under ``opportunistic_tls``), queued,
        in flight, and
        ``connection_limit``: how many connections the pool holds at most right now
        (``max_connections``, or fewer while the server refuses more)."""
        with self._lock:
            return {
                **self._counts,
                "queued": len(self._waiting),
                "in_flight": len(self._started),
                "connection_limit": self._connection_limit.limit,
            }

    def verify(self) -> bool:
        """Check the settings on a fresh connection outside the pool's slots: connect,
        EHLO, TLS, AUTH, QUIT.

        :raises SMTPError: the precise failure (ConnectError, TLSError, AuthenticationError...).
        """
        connection = SMTPConnection(options=self.options)
        try:
            connection.connect()
            with self._lock:
                self._counts["tls_fallbacks"] += connection.tls_fallback is not None
            connection.login()
        finally:
            connection.quit()
        return True

    def close(self, wait: bool = True, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Stop taking messages and release every connection, within a bound.

        ``wait=True`` delivers what is queued, then QUITs, for at most ``timeout``
        seconds (default 60; None waits as long as delivery takes).  Past it, messages
        still queued fail with :class:`PoolClosedError` (never sent), and connections
        still sending are cut: a message cut before its end of data fails with
        :class:`PoolClosedError`, one cut after it with ``delivery_unknown``.  Every
        future is then complete; returning can take a moment more (a straggler ends at
        its ``socket_timeout`` at most, the QUITs at 10 s).
        ``wait=False`` fails queued messages at once, lets those on the wire finish in
        the background and closes idle connections.

        :raises RuntimeError: ``wait=True`` from one of the pool's own threads (such as an
            ``on_idle`` callback), which would wait for itself.
        """
        if wait and getattr(_worker, "active", False):
            raise RuntimeError("close(wait=True) from a pool thread would wait for itself")
        with self._lock:
            self._closed = True
        cut = False
        if not wait:
            self._stop(cut=False)
        elif not self._wait_until(lambda: self._workers == 0, timeout):
            cut = True
            self._log.warning(
                "close(): %s s passed with messages in flight; failing the rest", timeout
            )
            self._stop(cut=True)
            # What was on the wire fails at once; one socket timeout bounds a straggler.
            self._wait_until(lambda: not self._started, self.options.socket_timeout)
        with self._lock:
            self._executor_open = False
            finished = self._workers == 0
        self._executor.shutdown(wait=finished)
        self._limiter.close()
        self._stop_housekeeper.set()
        housekeeper = self._housekeeper
        if housekeeper is not None and housekeeper is not threading.current_thread():
            housekeeper.join(HOUSEKEEPING_INTERVAL + WAIT_STEP)
        self._drain_idle(polite=wait and not cut)

    def __enter__(self) -> SMTPPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- bookkeeping of jobs (callers of the *_locked methods hold the lock) -------------

    def _wait_until(self, condition: Any, timeout: float | None) -> bool:
        """Wait, in bounded steps, until ``condition()`` holds; False if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not condition():
                step = WAIT_STEP
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return False
                self._changed.wait(step)
        return True

    def _spawn_locked(self) -> None:
        """Start a worker loop when messages wait and the working limit allows one more."""
        if self._waiting and self._executor_open and self._workers < self._connection_limit.limit:
            self._workers += 1
            try:
                self._executor.submit(self._work_loop)
            except RuntimeError:  # the interpreter is shutting down
                self._workers -= 1

    def _take_locked(self) -> Job | None:
        """The oldest queued job, now taken by the calling worker."""
        if not self._waiting:
            return None
        job = self._waiting.popleft()
        job.state = TAKEN
        self._started.add(job)
        return job

    def _give_back_locked(self, jobs: Iterable[Job]) -> None:
        """Put taken jobs back at the head of the queue, in their order."""
        for job in reversed(list(jobs)):
            if job.state == TAKEN:
                job.state = QUEUED
                self._started.discard(job)
                self._waiting.appendleft(job)

    def _withdraw_locked(self, jobs: Iterable[Job]) -> list[Job]:
        """Mark jobs that are not on the wire done and failed; the caller settles them."""
        withdrawn = []
        for job in jobs:
            if job.state in (QUEUED, TAKEN):
                job.state = DONE
                self._started.discard(job)
                withdrawn.append(job)
        self._counts["failed"] += len(withdrawn)
        return withdrawn

    def _withdraw(self, future: object, error: SMTPError) -> str:
        """Fail the job of ``future`` with ``error`` if it is not on the wire yet; return
        its state before: QUEUED or TAKEN (now withdrawn), SENDING, or DONE (also for a
        job no longer tracked, whose outcome is being settled)."""
        with self._lock:
            job = next((j for j in (*self._waiting, *self._started) if j.future is future), None)
            if job is None:
                return DONE
            state = job.state
            if not self._withdraw_locked([job]):
                return state
            if state == QUEUED:
                self._waiting.remove(job)
            self._changed.notify_all()
        settle(job.future, error)
        return state

    def _claim(self, job: Job) -> bool:
        """Put a taken job on the wire: False when it was withdrawn or cancelled meanwhile
        (the caller then calls ``_complete(job, None)``)."""
        with self._lock:
            if job.state != TAKEN:
                return False
            if not job.running and not job.future.set_running_or_notify_cancel():
                return False
            job.state, job.running = SENDING, True
            return True

    def _complete(self, job: Job, outcome: SendResult | BaseException | None) -> None:
        """A started job is over: count it and free its place (one lock round, before the
        caller can see the outcome), settle it, then tell on_idle.  ``outcome`` is None
        for a job cancelled by its caller; a job already withdrawn is left alone."""
        with self._lock:
            if job.state == DONE:
                return
            job.state = DONE
            self._started.discard(job)
            if isinstance(outcome, SendResult):
                self._throttle.flowing()
                self._counts["sent"] += 1
            elif outcome is not None:
                self._counts["failed"] += 1
            has_capacity = len(self._waiting) + len(self._started) < self.options.max_connections
        if outcome is not None:
            settle(job.future, outcome)
        if has_capacity and self.options.on_idle is not None:
            try:
                self.options.on_idle()
            except Exception:
                self._log.exception("on_idle callback failed")

    def _stop(self, *, cut: bool) -> None:
        """Start nothing more: fail every job not on the wire with PoolClosedError, stop
        the dials (no message needs them now) and, when ``cut``, cut the connections in
        use too, so that the messages on the wire end now."""
        with self._lock:
            self._stopping = True
            withdrawn = self._withdraw_locked([*self._waiting, *self._started])
            self._waiting.clear()
            connections = [*self._dials, *(self._in_use if cut else ())]
            self._changed.notify_all()
        reason = "close() timed out before it was sent" if cut else "the pool was closed"
        for job in withdrawn:
            settle(job.future, PoolClosedError(f"not sent: {reason}"))
        for connection in connections:
            connection.abort()
        self._limiter.close()  # a worker waiting for its turn to send wakes, and sends nothing

    # -- the worker --------------------------------------------------------------------

    def _work_loop(self) -> None:
        """A worker: send waiting messages while it has a connection for them, then end."""
        _worker.active = True
        held: deque[Job] = deque()  # taken by this worker: retries, and dials that failed
        try:
            self._work(held)
        except BaseException:  # a bug: its messages go back to the queue for another worker
            self._log.exception("a pool worker failed")
            with self._lock:
                self._end_worker_locked(held)
                self._spawn_locked()

    def _work(self, held: deque[Job]) -> None:
        while (assignment := self._assign(held)) is not None:
            job, slot = assignment
            held.appendleft(job)  # until it is on the wire: given back if this worker fails
            if slot is None:
                try:
                    connection = self._dial()
                except BaseException as exc:
                    if not self._dial_failed(exc):  # else another connection takes it
                        self._complete(held.popleft(), exc)
                    continue
                reused = False
            else:
                connection, reused = slot.connection, True
                if not self._usable(connection):
                    self._retire(connection)
                    continue
            held.popleft()
            held.extend(self._send(job, connection, reused))

    def _assign(self, held: deque[Job]) -> tuple[Job, IdleSlot | None] | None:
        """Wait, in bounded steps, until the next message (the first ``held``, else the
        oldest queued) can go: on an idle connection, or on one this worker dials (the
        slot is then None).  None when this worker should end; its held messages are
        then back at the head of the queue."""
        with self._changed:
            while True:
                assignment = self._assign_locked(held, time.monotonic())
                if not isinstance(assignment, float):
                    return assignment
                self._changed.wait(assignment)

    def _assign_locked(
        self, held: deque[Job], now: float
    ) -> tuple[Job, IdleSlot | None] | float | None:
        """The assignment, None (end this worker), or how long to wait before asking again."""
        while held and held[0].state == DONE:  # withdrawn while this worker held it
            held.popleft()
        limit = self._connection_limit
        if limit.grow(now):
            self._log.info(
                "%s:%s: trying %d connection(s) again", self.options.host, self.options.port,
                limit.limit,
            )  # fmt: skip
            self._spawn_locked()
        head = held[0] if held else (self._waiting[0] if self._waiting else None)
        if head is None or self._stopping or self._workers > limit.limit:
            self._end_worker_locked(held)
            return None
        slot = self._idle.take_newest()
        if slot is not None:
            self._in_use.add(slot.connection)
        elif limit.may_dial(now, self._open, self._dialing):
            self._dialing += 1
            limit.dialling(now, self._open)
            self._start_housekeeper_locked()  # it ends the wait of pool_timeout
        elif self._open + self._dialing < limit.limit:
            # Only the dial backoff holds this worker: it dials when that passes, and
            # meanwhile the connections that work may carry what it held.
            self._give_back_locked(held)
            held.clear()
            return self._wait_step_locked(now)
        elif self._workers > 1:  # the workers with connections carry the queue
            self._end_worker_locked(held)
            return None
        else:
            return self._wait_step_locked(now)
        job = held.popleft() if held else self._take_locked()
        assert job is not None
        return job, slot

    def _end_worker_locked(self, held: deque[Job]) -> None:
        self._give_back_locked(held)
        held.clear()
        self._workers -= 1
        self._changed.notify_all()

    def _wait_step_locked(self, now: float) -> float:
        """How long a worker that can do nothing now sleeps, at most."""
        return min(WAIT_STEP, self._connection_limit.dial_wait(now) or WAIT_STEP)

    def _expire(self) -> None:
        """Fail the messages whose wait for a connection is over (none is open, none
        could be opened, and ``pool_timeout`` has passed), queued or held by a worker."""
        now = time.monotonic()
        limit, pool_timeout = self._connection_limit, self.options.pool_timeout

        def over(job: Job) -> bool:
            ends = limit.wait_ends(job.queued_at, pool_timeout)
            return job.state in (QUEUED, TAKEN) and ends is not None and now >= ends

        with self._lock:
            expired = [job for job in (*self._waiting, *self._started) if over(job)]
            if not expired:
                return
            self._waiting = deque(job for job in self._waiting if not over(job))
            withdrawn = self._withdraw_locked(expired)
            error = self._no_connection_error(withdrawn)
            self._changed.notify_all()
        for job in withdrawn:
            settle(job.future, error)

    def _no_connection_error(self, jobs: list[Job]) -> ConnectError:
        opts = self.options
        last = self._last_dial_error
        waited = time.monotonic() - min(job.queued_at for job in jobs)
        text = f"not sent: no connection to {opts.host}:{opts.port} could be opened"
        text += f" within pool_timeout ({opts.pool_timeout:g} s; waited {waited:.1f} s)"
        if last is None:
            return ConnectError(text)
        error = ConnectError(
            f"{text}; last attempt: {last.message}",
            code=last.code if isinstance(last, ConnectError) else None,
            response=last.response,
            response_code=last.response_code,
            command=last.command,
        )
        error.__cause__ = last
        return error

    def _send(self, job: Job, connection: SMTPConnection, reused: bool) -> list[Job]:
        """Send ``job`` (and whatever the connection can pipeline behind it) on
        ``connection``, then give the connection back; return the jobs to try again."""
        in_flight: deque[Job] = deque([job])
        retry: list[Job] = []
        try:
            if reused:
                self._leases[connection].renew()
            self._limiter.acquire()
            if not self._claim(job):
                self._complete(in_flight.popleft(), None)
                return retry
            stream = connection.send_stream(
                (job.envelope, job.payload.attempt()),
                lambda: self._next_to_pipeline(connection, in_flight),
            )
            for outcome in stream:
                self._judge_outcome(in_flight.popleft(), outcome, reused, retry)
        except BaseException as exc:  # every in_flight message learns its fate, whatever happened
            while in_flight:
                self._judge_outcome(in_flight.popleft(), exc, reused, retry)
        finally:
            self._checkin(connection)
        return retry

    def _next_to_pipeline(
        self, connection: SMTPConnection, in_flight: deque[Job]
    ) -> tuple[Envelope, MessageInput] | None:
        """The next waiting message, for a worker whose connection can pipeline it now."""
        if not connection.has_room(len(in_flight)):
            return None
        while True:
            with self._lock:
                job = None if self._stopping else self._take_locked()
            if job is None:
                return None
            try:
                allowed = self._limiter.acquire(timeout=0)
            except SMTPError:  # closed, or undecidable: a worker's own acquire will say
                allowed = False
            if not allowed:  # it must wait its turn: leave it for a worker that can
                with self._lock:
                    self._give_back_locked([job])
                return None
            if self._claim(job):
                in_flight.append(job)
                return job.envelope, job.payload.attempt()
            self._complete(job, None)

    def _judge_outcome(
        self, job: Job, outcome: SendResult | BaseException, reused: bool, retry: list[Job]
    ) -> None:
        """Settle a message, or put it in ``retry`` when the failure proves it was not taken."""
        if isinstance(outcome, SMTPError):
            if is_throttling(outcome):
                self._pause_for(outcome)
            if is_retryable(outcome) and job.payload.replayable:
                if self._may_retry(job, reused) and self._hold_for_retry(job):
                    self._log.info("retrying a message after %s: %s", outcome.code, outcome.message)
                    retry.append(job)
                    return
            if self._stopping and not outcome.delivery_unknown:
                closed = PoolClosedError("not sent: the pool was closed while sending it")
                closed.__cause__ = outcome
                outcome = closed
        self._complete(job, outcome)

    def _may_retry(self, job: Job, reused: bool) -> bool:
        """Spend one of ``job``'s retries, if it has one left.  The retry goes at once to
        another connection; a new one is dialled under the dial backoff, which is what
        spaces out attempts on a server that keeps failing."""
        if reused and job.stale_allowance:
            job.stale_allowance -= 1
            return True
        if job.retries_used < self.options.retries:
            job.retries_used += 1
            return True
        return False

    def _hold_for_retry(self, job: Job) -> bool:
        """Take a failed attempt's job back for another attempt, unless the pool stops."""
        with self._lock:
            if self._stopping or job.state == DONE:
                return False
            job.state = TAKEN
            self._counts["retried"] += 1
            return True

    def _pause_for(self, error: SMTPError) -> None:
        with self._lock:
            pause = self._throttle.next_pause()
        self._log.warning(
            "server throttles (%s); pausing new messages for %.1f s", error.response, pause
        )
        try:
            self._limiter.pause(pause)
        except Exception:  # a shared limiter's store may be unreachable: the message goes on
            self._log.exception("pausing the rate limiter failed")

    # -- connections -------------------------------------------------------------------

    def _dial(self) -> SMTPConnection:
        """Open and log in a new connection (the caller counted it in ``_dialing``)."""
        connection = SMTPConnection(options=self.options)
        try:
            with self._lock:
                self._dials.add(connection)  # so that close() can cut it
            lease = self._limiter.lease_connection(self.options.connection_timeout)
            try:
                connection.connect()
                connection.login()
                if self._stopping:
                    raise PoolClosedError("the pool was closed while connecting")
            except BaseException:
                lease.release()
                connection.close()
                raise
        except BaseException:
            with self._lock:
                self._dials.discard(connection)
                self._dialing -= 1
                self._changed.notify_all()
            raise
        with self._lock:
            self._dials.discard(connection)
            self._in_use.add(connection)
            self._dialing -= 1
            self._open += 1
            self._leases[connection] = lease  # released by _retire
            self._counts["connections_opened"] += 1
            self._counts["tls_fallbacks"] += connection.tls_fallback is not None
            recovered = self._connection_limit.failures > 0
            self._connection_limit.dialled(self._open)
            self._spawn_locked()  # the queue may use one more connection
            self._changed.notify_all()  # workers waiting on this probe may dial now
        if recovered:
            self._log.warning("%s:%s: connected again", self.options.host, self.options.port)
        return connection

    def _dial_failed(self, exc: BaseException) -> bool:
        """Learn from a failed dial; True when it was temporary, so the message should
        wait for another connection, False when it fails the message (a permanent
        refusal such as a 554 greeting, a TLS or login failure, the pool closing)."""
        if not isinstance(exc, SMTPError) or isinstance(exc, PoolClosedError):
            return False
        if not exc.temporary:
            with self._lock:
                self._counts["connections_failed"] += 1
            return False
        opts = self.options
        with self._lock:
            limit = self._connection_limit
            failures = limit.failures
            cap = is_connection_cap(exc, others_open=self._open)
            lowered = limit.dial_failed(
                time.monotonic(), self._open, cap=cap, dialing=self._dialing
            )
            self._last_dial_error = exc
            self._counts["connections_failed"] += 1
            working, outage = limit.limit, self._open == 0 and failures == 0
            warn, self._cap_warned = lowered and not self._cap_warned, self._cap_warned or lowered
            stopping = self._stopping
        if lowered:  # at WARNING once in the pool's life, then at INFO
            self._log.log(
                logging.WARNING if warn else logging.INFO,
                "%s:%s refuses more connections (%s); working limit %d of %d, "
                "queued messages wait for the open ones",
                opts.host, opts.port, exc.response or exc.message, working, opts.max_connections,
            )  # fmt: skip
        elif outage:
            self._log.warning(
                "%s:%s: cannot connect (%s); retrying, messages wait up to %s s",
                opts.host, opts.port, exc, opts.pool_timeout,
            )  # fmt: skip
        else:
            self._log.info("%s:%s: connection attempt failed: %s", opts.host, opts.port, exc)
        return not stopping

    def _usable(self, connection: SMTPConnection) -> bool:
        try:
            return connection.is_reusable()
        except (OSError, ValueError):  # a socket in a state nobody can use
            return False

    def _checkin(self, connection: SMTPConnection) -> None:
        """Give a connection back after use; retire it when it cannot be reused."""
        within_limits = connection.is_within_limits()
        with self._lock:  # decided under the lock: close() may be emptying the idle list
            keep = within_limits and not (self._stopping or self._retire_returns)
            if keep:
                self._in_use.discard(connection)
                self._idle.put_back(connection, time.monotonic())
                self._changed.notify_all()
                self._start_housekeeper_locked()
        if not keep:
            self._retire(connection)

    def _retire(self, *connections: SMTPConnection, polite: bool = True) -> None:
        """Close connections for good (QUIT first when ``polite``, all in one round trip)
        and free their leases."""
        try:
            if polite:  # a connection close() cut is closed already: nothing is said
                quit_all(connections)
        finally:
            self._forget(connections)

    def _forget(self, connections: tuple[SMTPConnection, ...]) -> None:
        for connection in connections:
            connection.close()
        with self._lock:
            leases = [self._leases.pop(connection, None) for connection in connections]
            for connection in connections:
                self._in_use.discard(connection)
            self._open -= len(connections)
            self._counts["connections_retired"] += len(connections)
            self._changed.notify_all()
        for lease in leases:
            if lease is not None:
                lease.release()

    # -- the housekeeper: idle_timeout and pool_timeout -------------------------------

    def _start_housekeeper_locked(self) -> None:
        """Start the thread that closes idle connections and ends waits past pool_timeout
        (once, at the first dial or idle connection)."""
        if self._housekeeper is not None or self._closed:
            return
        opts = self.options
        interval = min(HOUSEKEEPING_INTERVAL, opts.idle_timeout / 4)
        if opts.pool_timeout is not None:
            interval = min(interval, opts.pool_timeout / 4)
        self._housekeeper = threading.Thread(
            target=_keep_house,
            args=(weakref.ref(self), self._stop_housekeeper, interval),
            name="smtppool-housekeeper",
            daemon=True,
        )
        self._housekeeper.start()

    def _take_idle(self, *, older_than: float | None = None) -> list[SMTPConnection]:
        """Take idle connections (those idle since before ``older_than``, or all) out of
        the idle list, into use, for retiring."""
        with self._lock:
            connections = self._idle.take(older_than=older_than)
            if older_than is None:
                self._retire_returns = True
            self._in_use.update(connections)
        return connections

    def _reap(self) -> None:
        limit = self.options.idle_timeout
        expired = self._take_idle(older_than=time.monotonic() - limit)
        if expired:
            self._log.debug("closing %d connection(s) idle for %.0f s", len(expired), limit)
            self._retire(*expired)

    def _drain_idle(self, *, polite: bool) -> None:
        self._retire(*self._take_idle(), polite=polite)

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's sockets unread and start afresh."""
        for connection in self._idle.connections():
            connection.close()  # closes the child's descriptor only; sends nothing
        self._setup()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, close_all, self._idle)


#: help(SMTPPool) lists every option with its default and meaning, from the one table.
SMTPPool.__doc__ = f"{inspect.cleandoc(SMTPPool.__doc__ or '')}\n\n{describe_options()}"


def _keep_house(pool_ref: weakref.ref[SMTPPool], stop: threading.Event, interval: float) -> None:
    """Housekeeper thread: holds the pool only weakly, so an unclosed pool can be freed."""
    while not stop.wait(interval):
        pool = pool_ref()
        if pool is None:
            return
        try:
            pool._reap()
            pool._expire()
        except Exception:
            pool._log.exception("pool housekeeping failed")
        del pool


def _reinitialise_after_fork() -> None:
    for pool in list(_POOLS):
        pool._after_fork()


os.register_at_fork(after_in_child=_reinitialise_after_fork)
