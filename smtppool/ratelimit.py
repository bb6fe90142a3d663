"""Rate limiting shared by every connection of a pool.

:class:`SlidingWindow` is the pure policy: no window of ``delta`` seconds ever sees more
than ``limit`` starts (stricter than Nodemailer's fixed buckets, which allow up to twice
the limit across a bucket edge).  :class:`RateLimiter` wraps it in a
``threading.Condition``: callers wait their turn in arrival order, sleep exactly until
the window allows them (in bounded steps, never spinning), can be paused by throttling
replies, and are woken with :class:`PoolClosedError` by :meth:`RateLimiter.close`.

:class:`Limiter` is the interface the pool talks to (``SMTPPool(rate_limiter=...)``):
message starts, pauses, closing, and a lease per open connection, so that a limiter
shared between processes (:mod:`smtppool.contrib.redis_limiter`) can also cap the
connections every process holds to one server.  The in-process limiter's leases are
free: ``max_connections`` already caps its pool.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .errors import PoolClosedError

__all__ = [
    "FREE_LEASE",
    "MAX_WAIT_STEP",
    "ConnectionLease",
    "Limiter",
    "RateLimiter",
    "SlidingWindow",
]


class ConnectionLease(Protocol):
    """The right to hold one connection open, from :meth:`Limiter.lease_connection`."""

    def renew(self) -> None:
        """Keep the lease alive; called whenever its connection starts a message."""

    def release(self) -> None:
        """Give the slot back (the connection is closed); safe to call twice."""


@runtime_checkable
class Limiter(Protocol):
    """What the pool needs of a rate limiter (``SMTPPool(rate_limiter=...)``)."""

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for permission to start one message; False if ``timeout`` passes first.

        :raises PoolClosedError: the limiter was closed while waiting.
        :raises SMTPError: the limiter cannot decide (e.g. its store is unreachable).
        """

    def pause(self, seconds: float) -> None:
        """Start nothing for ``seconds`` (a server asked us to slow down)."""

    def close(self) -> None:
        """Wake every waiter with :class:`PoolClosedError`; later acquires fail at once."""

    def lease_connection(self, timeout: float) -> ConnectionLease:
        """Wait for a connection slot before dialling.

        :raises SMTPTimeoutError: no slot came free within ``timeout`` seconds.
        """


class _FreeLease:
    """The lease of a limiter that does not cap connections."""

    def renew(self) -> None:
        pass

    def release(self) -> None:
        pass


FREE_LEASE = _FreeLease()

#: Longest single wait on the condition; loops re-check, so nothing can block forever.
MAX_WAIT_STEP = 1.0


class SlidingWindow:
    """At most ``limit`` starts in any ``delta``-second window: the times of the last
    ``limit`` starts are kept, and a new start waits until the oldest is ``delta`` old."""

    __slots__ = ("limit", "delta", "_starts")

    def __init__(self, limit: int, delta: float) -> None:
        if limit < 1 or delta <= 0:
            raise ValueError("a rate window needs limit >= 1 and delta > 0")
        self.limit = limit
        self.delta = delta
        self._starts: deque[float] = deque(maxlen=limit)

    def take(self, now: float) -> float:
        """Record a start at ``now`` and return 0, or return the seconds to wait first."""
        if len(self._starts) == self.limit:
            wait = self._starts[0] + self.delta - now
            if wait > 0:
                return wait
        self._starts.append(now)
        return 0.0


class RateLimiter:
    """Thread-safe, first-come-first-served gate in front of every message start."""

    def __init__(
        self, limit: int | None, delta: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = SlidingWindow(limit, delta) if limit is not None else None
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._paused_until = 0.0
        self._closed = False

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for permission to start one message; False if ``timeout`` passes first.

        :raises PoolClosedError: the limiter was closed while waiting.
        """
        if self._window is None and not self._queue and self._clock() >= self._paused_until:
            if self._closed:  # the common unlimited case needs no lock or wake-up
                raise PoolClosedError("the pool was closed while waiting to send")
            return True
        deadline = None if timeout is None else self._clock() + timeout
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise PoolClosedError("the pool was closed while waiting to send")
                    now = self._clock()
                    wait = MAX_WAIT_STEP
                    if self._queue[0] is ticket:
                        wait = max(self._paused_until - now, 0.0)
                        if wait == 0 and self._window is not None:
                            wait = self._window.take(now)
                        if wait == 0:
                            return True
                    if deadline is not None:
                        if now >= deadline:
                            return False
                        wait = min(wait, deadline - now)
                    self._cond.wait(min(wait, MAX_WAIT_STEP))
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """Start nothing for ``seconds`` (a server asked us to slow down)."""
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Wake every waiter with :class:`PoolClosedError`; later acquires fail at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def lease_connection(self, timeout: float) -> ConnectionLease:
        """Always free: one process's ``max_connections`` is capped by its own pool."""
        return FREE_LEASE
