"""A rate limit and a connection cap shared by every process that uses the same key.

Ten Celery workers with ``rate_limit=10`` each send a hundred messages a second; a
provider's limit is per account.  :class:`RedisLimiter` keeps one limit for all of them
in Redis: message starts through the ``limits`` library's moving window (no window of
``rate_delta`` seconds ever sees more than ``rate_limit`` starts, whichever process or
host starts them), and open connections through ``max_connections`` slots, each a
redis-py lock held as a lease while a connection is open.

Waits are bounded sleeps derived from the window's reset time, never a busy loop.  A
lease expires ``lease_ttl`` seconds after its last renewal (every message start renews
it), so the slots of a process killed without closing come free again.  When Redis
cannot be reached, :meth:`RedisLimiter.acquire` raises :class:`~smtppool.errors.
RateLimitError` (fail closed) unless ``fallback_processes`` is given: then each process
limits itself to ``rate_limit // fallback_processes`` until Redis answers again.

Needs the ``redis`` extra (``pip install 'smtppool[redis]'``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, cast

import redis
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import LockError, RedisError

from ..errors import PoolClosedError, RateLimitError, SMTPTimeoutError
from ..ratelimit import FREE_LEASE, MAX_WAIT_STEP, ConnectionLease, RateLimiter

__all__ = ["RedisLimiter"]

log = logging.getLogger("smtppool")

#: How long the per-process fallback is used before Redis is tried again.
FALLBACK_RETRY = 5.0
#: Shortest sleep while waiting for the window (Redis round trips are cheaper than this).
MIN_WAIT = 0.005
#: Polling interval, with jitter, while every connection slot is taken.
SLOT_POLL = (0.05, 0.2)
_UNREACHABLE = (RedisError, StorageError, OSError)


class RedisLimiter:
    """A :class:`~smtppool.ratelimit.Limiter` shared through Redis by every process that
    uses the same ``key``; pass one per pool as ``SMTPPool(rate_limiter=...)``.

    :param url: Redis URL (``redis://host:port/db``; ``rediss://`` for TLS).
    :param key: names the shared limit, e.g. the account or the server it protects.
    :param rate_limit: at most this many messages started per ``rate_delta`` seconds, or
        None for no rate limit (the connection cap alone).
    :param rate_delta: the window in whole seconds (the ``limits`` library's unit).
    :param max_connections: connections open at once to the server, over every process,
        or None for no shared cap.
    :param lease_ttl: seconds a connection slot stays taken without a renewal.
    :param fallback_processes: when Redis is unreachable, limit this process to
        ``rate_limit // fallback_processes`` instead of failing.
    :param redis_timeout: connect and read timeout of each Redis command.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key: str,
        rate_limit: int | None = None,
        rate_delta: int = 1,
        max_connections: int | None = None,
        lease_ttl: float = 300.0,
        fallback_processes: int | None = None,
        redis_timeout: float = 2.0,
    ) -> None:
        if not key or not isinstance(key, str):
            raise ValueError("key must be a non-empty string")
        if rate_limit is not None and (not isinstance(rate_limit, int) or rate_limit < 1):
            raise ValueError(f"rate_limit must be an int >= 1 or None, not {rate_limit!r}")
        if not isinstance(rate_delta, int) or rate_delta < 1:
            raise ValueError(f"rate_delta must be a whole number of seconds >= 1: {rate_delta!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1 or None")
        if fallback_processes is not None and fallback_processes < 1:
            raise ValueError("fallback_processes must be >= 1 or None")
        if lease_ttl <= 0 or redis_timeout <= 0:
            raise ValueError("lease_ttl and redis_timeout must be positive")
        self.key = key
        self.rate_limit = rate_limit
        self.rate_delta = rate_delta
        self.max_connections = max_connections
        self.lease_ttl = lease_ttl
        timeouts: dict[str, Any] = {
            "socket_timeout": redis_timeout,
            "socket_connect_timeout": redis_timeout,
        }
        self._redis = redis.Redis.from_url(url, **timeouts)
        self._window = MovingWindowRateLimiter(RedisStorage(url, wrap_exceptions=True, **timeouts))
        self._item = RateLimitItemPerSecond(rate_limit or 1, rate_delta)
        self._pause_key = f"smtppool:{key}:pause"
        self._fallback = (
            RateLimiter(max(1, (rate_limit or 1) // fallback_processes), rate_delta)
            if fallback_processes is not None and rate_limit is not None
            else None
        )
        self._fallback_wanted = fallback_processes is not None
        self._fallback_until = 0.0
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return (
            f"<RedisLimiter {self.key!r} rate {self.rate_limit}/{self.rate_delta}s, "
            f"connections {self.max_connections}>"
        )

    # -- message starts ----------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the shared window to allow one more start; False after ``timeout``.

        :raises PoolClosedError: :meth:`close` was called.
        :raises RateLimitError: Redis is unreachable and no fallback was asked for.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed.is_set():
                raise PoolClosedError("the pool was closed while waiting to send")
            remaining = None if deadline is None else deadline - time.monotonic()
            if self._use_fallback():
                if self._fallback is None:  # no rate limit configured: nothing to share
                    return True
                step = FALLBACK_RETRY if remaining is None else max(remaining, 0.0)
                if self._fallback.acquire(min(step, FALLBACK_RETRY)):
                    return True
            else:
                try:
                    wait = self._try_start()
                except _UNREACHABLE as exc:
                    self._unreachable(exc)
                    continue
                if wait == 0:
                    return True
                if remaining is not None:
                    if remaining <= 0:
                        return False
                    wait = min(wait, remaining)
                self._closed.wait(min(max(wait, MIN_WAIT), MAX_WAIT_STEP))
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _try_start(self) -> float:
        """Take a start from the shared window and return 0, or the seconds to wait."""
        paused_ms = self._redis.pttl(self._pause_key)
        if isinstance(paused_ms, int) and paused_ms > 0:
            return paused_ms / 1000
        if self.rate_limit is None or self._window.hit(self._item, self.key):
            return 0.0
        reset_at, _ = self._window.get_window_stats(self._item, self.key)
        return max(reset_at - time.time(), MIN_WAIT)

    def pause(self, seconds: float) -> None:
        """Pause every process sharing the key (a server asked us to slow down)."""
        milliseconds = max(int(seconds * 1000), 1)
        try:
            remaining = self._redis.pttl(self._pause_key)
            if not isinstance(remaining, int) or remaining < milliseconds:
                self._redis.set(self._pause_key, b"1", px=milliseconds)
        except _UNREACHABLE as exc:
            log.warning("shared pause not recorded (%s); pausing this process only", exc)
        if self._fallback is not None:
            self._fallback.pause(seconds)

    def close(self) -> None:
        """Wake every waiter with :class:`PoolClosedError`; later acquires fail at once."""
        self._closed.set()
        if self._fallback is not None:
            self._fallback.close()

    # -- connections -------------------------------------------------------------------

    def lease_connection(self, timeout: float) -> ConnectionLease:
        """Take one of the ``max_connections`` shared slots, waiting up to ``timeout``.

        :raises SMTPTimeoutError: every slot stayed taken.
        :raises RateLimitError: Redis is unreachable and no fallback was asked for.
        """
        if self.max_connections is None:
            return FREE_LEASE
        deadline = time.monotonic() + timeout
        slots = list(range(self.max_connections))
        while not self._closed.is_set():
            if self._use_fallback():
                return FREE_LEASE  # the pool's own max_connections still applies
            random.shuffle(slots)  # spread processes over the slots
            try:
                for slot in slots:
                    lock = self._redis.lock(  # released by whichever thread closes it
                        f"smtppool:{self.key}:connection:{slot}",
                        timeout=self.lease_ttl,
                        thread_local=False,
                    )
                    if lock.acquire(blocking=False):
                        return _RedisLease(lock, self.lease_ttl)
            except _UNREACHABLE as exc:
                self._unreachable(exc)
                continue
            if time.monotonic() >= deadline:
                raise SMTPTimeoutError(
                    f"all {self.max_connections} shared connection slots of {self.key!r} "
                    f"stayed taken for {timeout:.0f} s"
                )
            self._closed.wait(min(random.uniform(*SLOT_POLL), max(deadline - time.monotonic(), 0)))
        raise PoolClosedError("the pool was closed while waiting for a connection slot")

    def connections_in_use(self) -> int:
        """How many shared connection slots are taken now (for monitoring and tests)."""
        names = [f"smtppool:{self.key}:connection:{i}" for i in range(self.max_connections or 0)]
        return cast(int, self._redis.exists(*names)) if names else 0

    # -- Redis unreachable -------------------------------------------------------------

    def _use_fallback(self) -> bool:
        return self._fallback_wanted and time.monotonic() < self._fallback_until

    def _unreachable(self, exc: BaseException) -> None:
        """Fail closed, or switch this process to its share of the limit for a while."""
        if not self._fallback_wanted:
            raise RateLimitError(
                f"the shared rate limiter {self.key!r} cannot reach Redis: {exc}"
            ) from exc
        if not self._use_fallback():
            log.warning(
                "Redis unreachable (%s); limiting this process to its share for %.0f s",
                exc,
                FALLBACK_RETRY,
            )
        self._fallback_until = time.monotonic() + FALLBACK_RETRY


class _RedisLease:
    """One connection slot: a redis-py lock that expires unless renewed."""

    def __init__(self, lock: Any, ttl: float) -> None:
        self._lock = lock
        self._ttl = ttl
        self._renewed = time.monotonic()
        self._held = True

    def renew(self) -> None:
        if not self._held or time.monotonic() - self._renewed < self._ttl / 3:
            return  # renewing at most three times per TTL keeps Redis traffic low
        try:
            self._lock.reacquire()
            self._renewed = time.monotonic()
        except LockError:
            log.warning("a shared connection slot expired while in use; the cap may be exceeded")
            self._held = False
        except _UNREACHABLE as exc:
            raise RateLimitError(f"cannot renew a shared connection slot: {exc}") from exc

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self._lock.release()
        except (LockError, *_UNREACHABLE):
            pass  # expired or unreachable: the TTL frees it
