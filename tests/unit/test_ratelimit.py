"""Rate limiting: the pure sliding window with plain numbers, the wrapper with threads."""

from __future__ import annotations

import threading
import time

import pytest

from smtppool import PoolClosedError
from smtppool.ratelimit import RateLimiter, SlidingWindow


def test_window_allows_limit_then_says_how_long_to_wait() -> None:
    window = SlidingWindow(3, 1.0)
    assert [window.take(t) for t in (0.0, 0.1, 0.2)] == [0, 0, 0]
    assert window.take(0.5) == pytest.approx(0.5)  # until the start at 0.0 is a second old
    assert window.take(1.0) == 0
    assert window.take(1.05) == pytest.approx(0.05)  # the start at 0.1 is the oldest now
    assert window.take(1.1) == 0


def test_window_is_sliding_not_bucketed() -> None:
    """A fixed one-second bucket would allow 2 * limit around an edge; this never does."""
    window = SlidingWindow(5, 1.0)
    starts = []
    now = 0.0
    while len(starts) < 50:
        wait = window.take(now)
        if wait == 0:
            starts.append(now)
        now += wait or 0.013
    for i in range(len(starts) - 5):
        assert starts[i + 5] - starts[i] >= 1.0 - 1e-9


def test_window_validation() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0, 1.0)
    with pytest.raises(ValueError):
        SlidingWindow(1, 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_without_a_limit_never_waits() -> None:
    limiter = RateLimiter(None)
    assert all(limiter.acquire(timeout=0) for _ in range(1000))


def test_limiter_times_out_and_gives_up_its_turn() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 10.0, clock=clock)
    assert limiter.acquire(timeout=0)
    assert limiter.acquire(timeout=0) is False
    assert limiter.waiting == 0  # the abandoned ticket is gone
    clock.now += 10.0
    assert limiter.acquire(timeout=0)


def test_waiters_are_served_in_arrival_order() -> None:
    limiter = RateLimiter(1, 0.05)
    order: list[int] = []
    assert limiter.acquire()
    threads = []
    for i in range(5):
        thread = threading.Thread(target=lambda i=i: (limiter.acquire(5), order.append(i)))
        thread.start()
        threads.append(thread)
        while limiter.waiting < i + 1:  # make the arrival order certain
            time.sleep(0.001)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_pause_delays_every_start() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    limiter.pause(2.0)
    assert limiter.acquire(timeout=0) is False
    clock.now += 2.0
    assert limiter.acquire(timeout=0)


def test_close_wakes_waiters_with_pool_closed() -> None:
    limiter = RateLimiter(1, 60.0)
    assert limiter.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            limiter.acquire()
        except PoolClosedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    while limiter.waiting == 0:
        time.sleep(0.001)
    limiter.close()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1
    with pytest.raises(PoolClosedError):
        limiter.acquire(timeout=0)
