"""RedisLimiter against a real redis-server: one window, one connection cap, many pools."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from smtppool import SMTPPool
from smtppool.contrib.redis_limiter import RedisLimiter
from smtppool.errors import RateLimitError, SMTPTimeoutError
from smtppool.ratelimit import RateLimiter
from smtppool.sink import Sink

from .conftest import TRANSIT_ALLOWANCE, RedisServer, max_in_window

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: limited\r\n\r\nhi\r\n"


def test_one_window_for_every_limiter(redis_server: RedisServer) -> None:
    limiters = [RedisLimiter(redis_server.url, key="window", rate_limit=20) for _ in range(3)]
    starts: list[float] = []

    def start_twenty(limiter: RedisLimiter) -> None:
        for _ in range(20):
            assert limiter.acquire(timeout=10)
            starts.append(time.monotonic())

    began = time.monotonic()
    threads = [threading.Thread(target=start_twenty, args=(lim,)) for lim in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(starts) == 60
    assert max(starts) - began >= 1.9  # 60 starts at 20 per second: two full windows
    assert max_in_window(starts, 1 - TRANSIT_ALLOWANCE) <= 20  # wake-ups after the grant


def test_pools_share_the_rate_and_the_connection_cap(
    redis_server: RedisServer, smtpd: Callable[..., Sink]
) -> None:
    sink = smtpd()

    def pool() -> SMTPPool:
        limiter = RedisLimiter(redis_server.url, key="shared", rate_limit=15, max_connections=2)
        # Idle connections keep their slot until idle_timeout: keep it short so the
        # pools that got no slot yet get one soon.
        return SMTPPool(host="127.0.0.1", port=sink.port, max_connections=3, idle_timeout=0.3,
                        rate_limiter=limiter)  # fmt: skip

    pools = [pool(), pool(), pool()]
    try:
        futures = [p.submit(MESSAGE) for _ in range(15) for p in pools]
        for future in futures:
            future.result(30)
    finally:
        for p in pools:
            p.close()
    assert len(sink.messages) == 45
    assert max_in_window([m.received_at for m in sink.messages], 1 - TRANSIT_ALLOWANCE) <= 15
    assert sink.max_concurrent <= 2  # nine connections wanted, two allowed


def test_a_dead_holders_slot_comes_free_after_its_lease(redis_server: RedisServer) -> None:
    holder = RedisLimiter(redis_server.url, key="lease", max_connections=1, lease_ttl=1)
    other = RedisLimiter(redis_server.url, key="lease", max_connections=1, lease_ttl=1)
    holder.lease_connection(1)  # never released: its process "died"
    assert other.connections_in_use() == 1
    with pytest.raises(SMTPTimeoutError, match="connection slots"):
        other.lease_connection(0.3)
    began = time.monotonic()
    lease = other.lease_connection(5)
    assert 0.3 <= time.monotonic() - began <= 2.5
    lease.release()
    lease.release()  # twice is harmless
    assert other.connections_in_use() == 0


def test_a_pause_holds_every_process(redis_server: RedisServer) -> None:
    throttled = RedisLimiter(redis_server.url, key="pause", rate_limit=100)
    other = RedisLimiter(redis_server.url, key="pause", rate_limit=100)
    throttled.pause(0.6)
    began = time.monotonic()
    assert not other.acquire(timeout=0.2)
    assert other.acquire(timeout=5)
    assert time.monotonic() - began >= 0.5


def test_redis_gone_fails_closed_without_hanging(
    redis_server: RedisServer, smtpd: Callable[..., Sink]
) -> None:
    sink = smtpd()
    limiter = RedisLimiter(redis_server.url, key="closed", rate_limit=50, redis_timeout=1)
    with SMTPPool(host="127.0.0.1", port=sink.port, rate_limiter=limiter) as pool:
        pool.send(MESSAGE)
        redis_server.stop()
        began = time.monotonic()
        with pytest.raises(RateLimitError, match="cannot reach Redis") as failure:
            pool.send(MESSAGE, timeout=20)
        assert time.monotonic() - began < 5
        assert failure.value.temporary
    assert len(sink.messages) == 1  # nothing sent without the limiter's permission


def test_redis_gone_falls_back_to_a_share_when_asked(
    redis_server: RedisServer, smtpd: Callable[..., Sink]
) -> None:
    sink = smtpd()
    limiter = RedisLimiter(
        redis_server.url, key="fallback", rate_limit=20, fallback_processes=2, redis_timeout=1
    )
    with SMTPPool(host="127.0.0.1", port=sink.port, rate_limiter=limiter) as pool:
        pool.send(MESSAGE)
        redis_server.stop()
        fallback_began = time.monotonic()
        for future in [pool.submit(MESSAGE) for _ in range(25)]:
            future.result(30)
    later = [m.received_at for m in sink.messages if m.received_at >= fallback_began]
    assert len(later) == 25
    assert max_in_window(later, 1 - TRANSIT_ALLOWANCE) <= 10  # this process's share: 20 // 2


def test_limiter_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="whole number"):
        RedisLimiter(key="k", rate_limit=5, rate_delta=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        RedisLimiter(key="", rate_limit=5)
    with pytest.raises(ValueError, match="rate_limit or rate_limiter"):
        SMTPPool(host="127.0.0.1", rate_limit=5, rate_limiter=RateLimiter(5))
    with pytest.raises(TypeError, match="Limiter"):
        SMTPPool(host="127.0.0.1", rate_limiter=object())  # type: ignore[arg-type]
