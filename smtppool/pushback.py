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

The pool holds these objects under its own lock and passes ``now`` in, so every
decision is tested with plain numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import ConnectError, SMTPError, SMTPTimeoutError

__all__ = [
    "ConnectionLimit",
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
