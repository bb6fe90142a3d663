"""SMTPPool: persistent, rate-limited SMTP connections behind a thread pool.

Submitted messages wait in the pool's queue (:class:`~smtppool.jobs.Jobs`); worker
loops (:mod:`smtppool.workers`) carry them over the pool's connections
(:mod:`smtppool.connections`), under the push-back policy (:mod:`smtppool.pushback`)
and the rate limiter; a housekeeper thread closes idle connections and ends waits past
``pool_timeout``.  This module holds them together behind the public API and one lock.
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
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_for_futures
from types import TracebackType
from typing import Any

from .config import Options, describe_options
from .connection import SMTPConnection
from .connections import PoolConnections
from .envelope import Envelope, SendResult, pair_with_envelope
from .errors import PoolClosedError, PoolTimeoutError, SMTPError, SMTPTimeoutError
from .housekeeping import Housekeeper
from .idle import close_all
from .jobs import SENDING, Completion, Job, Jobs, Payload, Settleable
from .message import MessageInput
from .pushback import Pushback
from .ratelimit import Limiter, RateLimiter
from .workers import WAIT_STEP, Workers, in_worker_thread

__all__ = ["CLOSE_TIMEOUT", "SMTPPool"]

#: How long ``close()`` waits for queued and in-flight messages by default.
CLOSE_TIMEOUT = 60.0
#: How often, at most, idle connections are checked for ``idle_timeout`` and waiting
#: messages for ``pool_timeout``.
HOUSEKEEPING_INTERVAL = 1.0
#: send_many's default window, per connection: each connection has about two messages
#: on the wire when pipelining, and half a window must still be queued behind them
#: while the caller sleeps (see send_many). Once the pool's connections stack
#: transactions, each keeps up to ``stack_messages`` on the wire, and the window per
#: connection grows to twice that (not before: at loopback a window larger than the
#: connections need costs pure-Python CPU, threads contending for the GIL).
SEND_MANY_WINDOW = 8

EnvelopeInput = Envelope | Mapping[str, Any]


_POOLS: weakref.WeakSet[SMTPPool] = weakref.WeakSet()


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
        self._finalizer = weakref.finalize(self, close_all, self._connections.idle)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> SMTPPool:
        """Build a pool from ``smtp://``, ``smtps://`` or ``lmtp://user:pw@host:port/?opts``."""
        return cls(url=url, **overrides)

    def _setup(self) -> None:
        """(Re)create every piece of runtime state; also used in a forked child."""
        opts = self.options
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # jobs, connections, workers moved
        self._limiter: Limiter = self._shared_limiter or RateLimiter(
            opts.rate_limit, opts.rate_delta
        )
        self._jobs = Jobs()
        self._pushback = Pushback(
            opts.max_connections, opts.retries, opts.pool_timeout, clock=time.monotonic
        )
        interval = min(HOUSEKEEPING_INTERVAL, opts.idle_timeout / 4)
        if opts.pool_timeout is not None:
            interval = min(interval, opts.pool_timeout / 4)
        self._housekeeper = Housekeeper(self._keep_house, interval, self._log)
        self._connections = PoolConnections(
            opts, self._limiter, self._pushback, self._changed, self._log,
            start_housekeeper=self._housekeeper.start,
        )  # fmt: skip
        self._workers = Workers(
            opts, self._changed, self._jobs, self._connections, self._pushback,
            self._limiter, self._log, start_housekeeper=self._housekeeper.start,
        )  # fmt: skip
        self._closed = False  # no new messages

    def __repr__(self) -> str:
        with self._lock:
            connections, limit = self._connections, self._pushback.limit
            idle = len(connections.idle)
            capped = f", working limit {limit.limit} of {limit.ceiling}" if limit.capped else ""
            return (
                f"<SMTPPool {self.options.host}:{self.options.port} "
                f"[in flight {len(self._jobs.started)}, queued {len(self._jobs.waiting)} | "
                f"connections {connections.open - idle} busy, {idle} idle{capped}]>"
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
        job = Job(Payload(message), env, done, self._pushback.clock())  # the policy's clock
        with self._lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._jobs.add(job)
            self._workers.spawn_locked()

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
            state = self._workers.withdraw(future, withdrawn)
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

        At most ``window`` messages are pending at once (default ``8 * max_connections``,
        or ``2 * stack_messages * max_connections`` once the connections stack
        transactions, so they stay fed), and any iterable, a generator of millions
        included, streams in bounded memory.
        Items are messages or ``(message, envelope)`` pairs.

        When the oldest outcome is not in yet, the caller sleeps until the middle of the
        window has settled rather than waking for each outcome: one wake-up per half a
        window, while the other half keeps every connection's stream fed.
        """
        pending: deque[Completion] = deque()
        for item in messages:
            message, envelope = item if isinstance(item, tuple) else (item, None)
            done = Completion()
            self._enqueue(message, envelope, done)
            pending.append(done)
            limit = window or self._default_window()
            while len(pending) >= limit:
                if not pending[0].settled:
                    pending[(limit - 1) // 2].wait()
                yield pending.popleft().outcome()
        while pending:
            yield pending.popleft().outcome()

    def _default_window(self) -> int:
        options = self.options
        per_connection = SEND_MANY_WINDOW
        if self._workers.stacking:
            per_connection = max(per_connection, 2 * options.stack_messages)
        return per_connection * options.max_connections

    def is_idle(self) -> bool:
        """True while fewer than ``max_connections`` messages are queued or in flight."""
        with self._lock:
            return len(self._jobs) < self.options.max_connections

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: sent, failed, retried, connections opened, retired and
        failed (dials that did not give a session), ``tls_fallbacks`` (connections that
        went on without the TLS the server offered, under ``opportunistic_tls``), queued,
        in flight, and
        ``connection_limit``: how many connections the pool holds at most right now
        (``max_connections``, or fewer while the server refuses more)."""
        with self._lock:
            return {
                **self._workers.counts,
                **self._connections.counts,
                "queued": len(self._jobs.waiting),
                "in_flight": len(self._jobs.started),
                "connection_limit": self._pushback.limit.limit,
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
                self._connections.count_fallback_locked(connection)
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
        if wait and in_worker_thread():
            raise RuntimeError("close(wait=True) from a pool thread would wait for itself")
        with self._lock:
            self._closed = True
        cut = False
        if not wait:
            self._workers.stop(cut=False)
        elif not self._wait_until(lambda: self._workers.running == 0, timeout):
            cut = True
            self._log.warning(
                "close(): %s s passed with messages in flight; failing the rest", timeout
            )
            self._workers.stop(cut=True)
            # What was on the wire fails at once; one socket timeout bounds a straggler.
            self._wait_until(lambda: not self._jobs.started, self.options.socket_timeout)
        self._workers.shut_down()
        self._limiter.close()
        self._housekeeper.stop(HOUSEKEEPING_INTERVAL + WAIT_STEP)
        self._connections.drain(polite=wait and not cut)

    def __enter__(self) -> SMTPPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    # -- the housekeeper's chores, and forks -------------------------------------------

    def _keep_house(self) -> None:
        self._connections.reap()
        self._workers.expire()

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's sockets unread and start afresh."""
        for connection in self._connections.idle.connections():
            connection.close()  # closes the child's descriptor only; sends nothing
        self._setup()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, close_all, self._connections.idle)


#: help(SMTPPool) lists every option with its default and meaning, from the one table.
SMTPPool.__doc__ = f"{inspect.cleandoc(SMTPPool.__doc__ or '')}\n\n{describe_options()}"


def _reinitialise_after_fork() -> None:
    for pool in list(_POOLS):
        pool._after_fork()


os.register_at_fork(after_in_child=_reinitialise_after_fork)
