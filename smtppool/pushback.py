"""How the pool answers a server that pushes back: pure decisions, no clock, no lock.

Servers limit clients in three ways, and each has its own answer here:

* **A cap on connections** ("421 4.7.0 too many connections", Outlook's "432 4.3.2",
  or a hang-up before the greeting): :class:`ConnectionLimit` keeps the pool's working
  connection limit, lowered to what is open when the server refuses one more and raised
  by one after each quiet period (additive increase, multiplicative decrease, as TCP
  does).  It also spaces out dials after failures (one probe at a time, exponential
  backoff) and knows since when no connection could be opened, for ``pool_timeout``.
* **Throttling** of messages on a working session (421 or 454, or a 4xx to MAIL):
  :class:`Throttle` gives the pause before new messages, doubling while it continues.
* **Failures of a message's attempt**: :func:`is_retryable` says whether the failure
  proves the server did not take it.  The retry goes to another connection at once;
  when that means dialling, the dial backoff above spaces the attempts.

:class:`Pushback` gathers them into the pool's one policy object (as urllib3's
``Retry`` is its pool's): whether a failed attempt is retried (:class:`RetryBudget`),
the pause a throttling reply earns, what a failed dial teaches.  The pool holds it under
its own lock; its clock is injected, so every decision is tested with plain numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConnectError, SMTPError, SMTPTimeoutError

__all__ = [
    "ConnectionLimit",
    "Pushback",
    "RetryBudget",
    "Throttle",
    "is_connection_cap",
    "is_retryable",
    "is_throttling",
]

#: Pause after a throttling reply; doubles while they continue, up to MAX_THROTTLE_PAUSE.
THROTTLE_PAUSE = 1.0
MAX_THROTTLE_PAUSE = 30.0
#: Wait before the next dial after a failed one; doubles per consecutive failure.
DIAL_BACKOFF = 0.05
MAX_DIAL_BACKOFF = 10.0
#: Seconds without a refusal before the working connection limit grows by one.
LIMIT_RECOVERY = 10.0

#: Enhanced status codes servers give with "too many connections" (RFC 3463: 4.7.0
#: security or policy, 4.3.2 system not accepting network messages).
_CAP_STATUS = re.compile(r"^4\d\d[ -]4\.(7\.0|3\.2)\b")
_CAP_TEXT = re.compile(r"too many|concurren|connection limit|limit exceeded", re.IGNORECASE)


def is_connection_cap(error: SMTPError, *, others_open: int) -> bool:
    """True when a failed dial means "you have too many connections".

    That is a 432, a 421 with enhanced status 4.7.0 or 4.3.2 or with words to that
    effect, or, while this client has other connections open, a connection reset or
    closed before any reply (some servers and firewalls just hang up on one too many).
    """
    code = error.response_code
    if code == 432:
        return True
    if code == 421:
        text = error.response or ""
        return bool(_CAP_STATUS.match(text) or _CAP_TEXT.search(text))
    return (
        code is None
        and others_open > 0
        and isinstance(error, ConnectError)
        and error.code == "ECONNECTION"
    )


def is_throttling(error: SMTPError) -> bool:
    """A working session told to slow down: 421 or 454, or a 4xx to MAIL FROM."""
    code = error.response_code
    if code in (421, 454):
        return True
    return code is not None and 400 <= code < 500 and (error.command or "").startswith("MAIL")


def is_retryable(error: SMTPError) -> bool:
    """Only failures that prove the server did not take the message: temporary,
    connection-level ones (a 421 included) before the end of the data; never a
    refusal, a permanent reply, or a lost verdict (``delivery_unknown``)."""
    return (
        isinstance(error, (ConnectError, SMTPTimeoutError))
        and error.temporary
        and not error.delivery_unknown
    )


@dataclass
class Throttle:
    """The pause a throttling reply earns: doubling while they continue, back to the
    first pause once a message goes through."""

    first: float = THROTTLE_PAUSE
    most: float = MAX_THROTTLE_PAUSE
    pause: float = field(init=False)

    def __post_init__(self) -> None:
        self.pause = self.first

    def next_pause(self) -> float:
        pause = self.pause
        self.pause = min(pause * 2, self.most)
        return pause

    def flowing(self) -> None:
        """A message was delivered: the next throttling starts from the first pause."""
        self.pause = self.first


@dataclass
class ConnectionLimit:
    """How many connections the pool may hold now, and when it may dial.

    ``limit`` starts at ``ceiling`` (``max_connections``).  A refusal that means "too
    many connections" lowers it to what is open (at least 1); each ``recovery`` seconds
    without one raises it by one, up to ``ceiling``.  After a failed dial only one dial
    at a time is tried, each after a backoff that doubles per consecutive failure.
    """

    ceiling: int
    recovery: float = LIMIT_RECOVERY
    backoff: float = DIAL_BACKOFF
    max_backoff: float = MAX_DIAL_BACKOFF
    limit: int = field(init=False)
    #: Consecutive failed dials, and the earliest time of the next.
    failures: int = 0
    dial_at: float = 0.0
    #: Since when the pool has been trying to connect with no connection open, or None.
    outage_since: float | None = None
    #: When the limit last changed (a refusal lowered it, or it grew).
    changed_at: float = -math.inf

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError("a connection limit needs a ceiling of at least 1")
        self.limit = self.ceiling

    @property
    def capped(self) -> bool:
        return self.limit < self.ceiling

    def may_dial(self, now: float, open_: int, dialing: int) -> bool:
        """Whether one more connection may be dialled now."""
        if open_ + dialing >= self.limit:
            return False
        if self.failures:  # probing a server that failed us: one dial at a time, spaced
            return dialing == 0 and now >= self.dial_at
        return True

    def dial_wait(self, now: float) -> float:
        """Seconds until the backoff allows the next dial (0 when it does now)."""
        return max(self.dial_at - now, 0.0) if self.failures else 0.0

    def dialling(self, now: float, open_: int) -> None:
        """A dial starts while ``open_`` connections are open: with none, the wait
        ``pool_timeout`` bounds starts now (a dial that hangs counts too)."""
        if open_ == 0 and self.outage_since is None:
            self.outage_since = now

    def dialled(self, open_: int) -> None:
        """A dial succeeded; ``open_`` connections are open, the new one included."""
        self.failures = 0
        self.outage_since = None
        self.limit = max(self.limit, min(open_, self.ceiling))

    def dial_failed(self, now: float, open_: int, *, cap: bool, dialing: int = 0) -> bool:
        """A dial failed with a temporary error while ``open_`` connections stay open and
        ``dialing`` other dials are under way; ``cap`` when the failure means "too many
        connections".  True when the limit fell (to those, which may yet succeed)."""
        self.failures += 1
        self.dial_at = now + min(self.backoff * 2 ** (self.failures - 1), self.max_backoff)
        if open_ == 0 and self.outage_since is None:
            self.outage_since = now
        if not cap:
            return False
        self.changed_at = now  # the quiet period starts again
        lowered = max(open_ + dialing, 1)
        if lowered >= self.limit:
            return False
        self.limit = lowered
        return True

    def grow(self, now: float) -> bool:
        """Raise the limit by one after a quiet period; True when it grew."""
        if self.limit >= self.ceiling or now - self.changed_at < self.recovery:
            return False
        self.limit += 1
        self.changed_at = now
        return True

    def wait_ends(self, queued_at: float, pool_timeout: float | None) -> float | None:
        """When a message queued at ``queued_at`` stops waiting for a connection, or None
        while it may wait on (connections are open, or the pool has no pool_timeout)."""
        if self.outage_since is None or pool_timeout is None:
            return None
        return max(queued_at, self.outage_since) + pool_timeout


@dataclass(slots=True)
class RetryBudget:
    """One message's attempts left: ``used`` of the pool's ``retries``, and one free
    attempt after a reused connection turned out dead (the server closed it while it
    was idle: no fault of the message's)."""

    used: int = 0
    stale: int = 1


@dataclass
class Pushback:
    """The pool's policy under push-back: retries, throttling, the working connection
    limit and the dial backoff, with the time from ``clock``."""

    max_connections: int
    retries: int
    pool_timeout: float | None
    clock: Callable[[], float]
    limit: ConnectionLimit = field(init=False)
    throttle: Throttle = field(default_factory=Throttle)
    #: The last failed dial's error, for the error that ends a wait for a connection.
    last_dial_error: SMTPError | None = None

    def __post_init__(self) -> None:
        self.limit = ConnectionLimit(self.max_connections)

    def wait_over(self, queued_at: float) -> bool:
        """Whether a message queued at ``queued_at`` has waited for a connection past
        ``pool_timeout`` (the wait counts only while no connection is open)."""
        ends = self.limit.wait_ends(queued_at, self.pool_timeout)
        return ends is not None and self.clock() >= ends

    def grant_retry(
        self, budget: RetryBudget, error: SMTPError, *, reused: bool, replayable: bool
    ) -> bool:
        """Whether a failed attempt gets another, spending it from ``budget``: only when
        the failure proves the server did not take the message (:func:`is_retryable`)
        and the message can be sent again.  The retry goes at once to another
        connection; a new one is dialled under the dial backoff, which is what spaces
        out attempts on a server that keeps failing."""
        if not (replayable and is_retryable(error)):
            return False
        if reused and budget.stale:
            budget.stale -= 1
            return True
        if budget.used < self.retries:
            budget.used += 1
            return True
        return False

    def pause_for(self, error: SMTPError) -> float | None:
        """The pause before new messages that ``error`` earns, or None when it is not
        throttling."""
        return self.throttle.next_pause() if is_throttling(error) else None

    def delivered(self) -> None:
        """A message went through: throttling, if it comes again, starts afresh."""
        self.throttle.flowing()

    def dial_failed(self, error: SMTPError, *, open_: int, dialing: int) -> bool:
        """Learn from a dial that failed with a temporary ``error`` while ``open_``
        connections are open and ``dialing`` others are being dialled; True when the
        working limit fell (the server caps connections)."""
        self.last_dial_error = error
        cap = is_connection_cap(error, others_open=open_)
        return self.limit.dial_failed(self.clock(), open_, cap=cap, dialing=dialing)

    def no_connection_error(self, host: str, port: int | None, waited: float) -> ConnectError:
        """The error for messages whose wait for a connection ran past ``pool_timeout``
        (after ``waited`` seconds), carrying the last failed dial's reply and cause."""
        last = self.last_dial_error
        text = f"not sent: no connection to {host}:{port} could be opened"
        text += f" within pool_timeout ({self.pool_timeout:g} s; waited {waited:.1f} s)"
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
