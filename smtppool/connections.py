"""The pool's connections: dialled under the working limit, lent out, idle, retired.

:class:`PoolConnections` knows every connection the pool holds (being dialled, in use,
idle) and their leases from the limiter, and counts them for ``stats()``.  A worker
asks it for a connection (the most recently used idle one, or leave to dial one when
the working limit and the dial backoff allow), dials, and checks the connection back in
after use; what cannot be reused, or comes back while the pool closes, is retired with
a QUIT.  It shares the pool's lock and condition: methods named ``*_locked`` expect the
caller to hold it, the others take it, and no network I/O happens under it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .config import Options
from .connection import SMTPConnection, quit_all
from .errors import PoolClosedError, SMTPError
from .idle import IdleConnections, IdleSlot
from .pushback import Pushback
from .ratelimit import ConnectionLease, Limiter

__all__ = ["DIAL", "PoolConnections"]

#: What :meth:`PoolConnections.lend_locked` returns when the caller may dial one.
DIAL = "dial"


class PoolConnections:
    """Every connection of one pool: see the module's docstring."""

    def __init__(
        self,
        options: Options,
        limiter: Limiter,
        pushback: Pushback,
        changed: threading.Condition,
        log: logging.Logger,
        *,
        start_housekeeper: Callable[[], None],
    ) -> None:
        self.options = options
        self._limiter = limiter
        self._pushback = pushback
        self._changed = changed  # the pool's: its lock guards everything here
        self._log = log
        self._start_housekeeper = start_housekeeper  # it reaps idle connections
        self.idle = IdleConnections()
        self._dials: set[SMTPConnection] = set()  # being dialled
        self._in_use: set[SMTPConnection] = set()  # sending or retiring
        self._leases: dict[SMTPConnection, ConnectionLease] = {}
        self.open = 0  # idle, sending or retiring
        self.dialing = 0
        #: Set when the pool stops (``close(wait=False)``, or ``close()`` timed out) and
        #: when ``close()`` retires the idle connections at its end: no new dial, and
        #: every connection that comes back is retired.
        self.closing = False
        self._cap_warned = False
        self.counts = dict.fromkeys(
            ("connections_opened", "connections_retired", "connections_failed", "tls_fallbacks"),
            0,
        )

    # -- lending (the caller holds the lock) ---------------------------------------------

    def lend_locked(self, now: float) -> IdleSlot | str | None:
        """The newest idle connection, now in use; else :data:`DIAL` when one may be
        dialled (the caller then calls :meth:`dial`); else None."""
        slot = self.idle.take_newest()
        if slot is not None:
            self._in_use.add(slot.connection)
            return slot
        limit = self._pushback.limit
        if limit.may_dial(now, self.open, self.dialing):
            self.dialing += 1
            limit.dialling(now, self.open)
            return DIAL
        return None

    def below_limit_locked(self) -> bool:
        """True while the pool holds fewer connections than its working limit."""
        return self.open + self.dialing < self._pushback.limit.limit

    def to_abort_locked(self, *, in_use: bool) -> list[SMTPConnection]:
        """Close the pool to new connections; the dials under way (and, when ``in_use``,
        the connections sending) for the caller to abort."""
        self.closing = True
        return [*self._dials, *(self._in_use if in_use else ())]

    # -- dialling ------------------------------------------------------------------------

    def dial(self) -> SMTPConnection:
        """Open and log in a new connection (after :meth:`lend_locked` said DIAL)."""
        connection = SMTPConnection(options=self.options)
        try:
            with self._changed:
                self._dials.add(connection)  # so that closing can cut it
            lease = self._limiter.lease_connection(self.options.connection_timeout)
            try:
                connection.connect()
                connection.login()
                if self.closing:
                    raise PoolClosedError("the pool was closed while connecting")
            except BaseException:
                lease.release()
                connection.close()
                raise
        except BaseException:
            with self._changed:
                self._dials.discard(connection)
                self.dialing -= 1
                self._changed.notify_all()
            raise
        with self._changed:
            self._dials.discard(connection)
            self._in_use.add(connection)
            self.dialing -= 1
            self.open += 1
            self._leases[connection] = lease  # released by retire
            self.counts["connections_opened"] += 1
            self.count_fallback_locked(connection)
            recovered = self._pushback.limit.failures > 0
            self._pushback.limit.dialled(self.open)
            self._changed.notify_all()  # workers waiting on this probe may dial now
        if recovered:
            self._log.warning("%s:%s: connected again", self.options.host, self.options.port)
        return connection

    def count_fallback_locked(self, connection: SMTPConnection) -> None:
        self.counts["tls_fallbacks"] += connection.tls_fallback is not None

    def dial_failed(self, exc: BaseException) -> bool:
        """Learn from a failed dial; True when it was temporary, so the message should
        wait for another connection, False when it fails the message (a permanent
        refusal such as a 554 greeting, a TLS or login failure, the pool closing)."""
        if not isinstance(exc, SMTPError) or isinstance(exc, PoolClosedError):
            return False
        if not exc.temporary:
            with self._changed:
                self.counts["connections_failed"] += 1
            return False
        opts = self.options
        with self._changed:
            pushback = self._pushback
            failures = pushback.limit.failures
            lowered = pushback.dial_failed(exc, open_=self.open, dialing=self.dialing)
            self.counts["connections_failed"] += 1
            working, outage = pushback.limit.limit, self.open == 0 and failures == 0
            warn, self._cap_warned = lowered and not self._cap_warned, self._cap_warned or lowered
            closing = self.closing
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
        return not closing

    # -- use and return ------------------------------------------------------------------

    def renew(self, connection: SMTPConnection) -> None:
        """A reused connection starts another run: renew its lease."""
        self._leases[connection].renew()

    def keep_if_usable(self, connection: SMTPConnection) -> bool:
        """Whether a connection taken from the idle list can carry a message; one that
        cannot is retired here."""
        try:
            usable = connection.is_reusable()
        except (OSError, ValueError):  # a socket in a state nobody can use
            usable = False
        if not usable:
            self.retire(connection)
        return usable

    def check_in(self, connection: SMTPConnection) -> None:
        """Take a connection back after use; retire it when it cannot be reused."""
        within_limits = connection.is_within_limits()
        with self._changed:  # decided under the lock: closing may be emptying the idle list
            keep = within_limits and not self.closing
            if keep:
                self._in_use.discard(connection)
                self.idle.put_back(connection, time.monotonic())
                self._changed.notify_all()
                self._start_housekeeper()
        if not keep:
            self.retire(connection)

    def retire(self, *connections: SMTPConnection, polite: bool = True) -> None:
        """Close connections for good (QUIT first when ``polite``, all in one round trip)
        and free their leases."""
        try:
            if polite:  # a connection the pool cut is closed already: nothing is said
                quit_all(connections)
        finally:
            self._forget(connections)

    def _forget(self, connections: tuple[SMTPConnection, ...]) -> None:
        for connection in connections:
            connection.close()
        with self._changed:
            leases = [self._leases.pop(connection, None) for connection in connections]
            for connection in connections:
                self._in_use.discard(connection)
            self.open -= len(connections)
            self.counts["connections_retired"] += len(connections)
            self._changed.notify_all()
        for lease in leases:
            if lease is not None:
                lease.release()

    # -- idle connections ------------------------------------------------------------

    def reap(self) -> None:
        """Retire the connections idle for longer than ``idle_timeout``."""
        limit = self.options.idle_timeout
        expired = self._take_idle(older_than=time.monotonic() - limit)
        if expired:
            self._log.debug("closing %d connection(s) idle for %.0f s", len(expired), limit)
            self.retire(*expired)

    def drain(self, *, polite: bool) -> None:
        """Retire every idle connection, and from now on each that comes back."""
        self.retire(*self._take_idle(), polite=polite)

    def _take_idle(self, *, older_than: float | None = None) -> list[SMTPConnection]:
        """Take idle connections (those idle since before ``older_than``, or all, which
        also closes the pool to returning ones) out of the idle list, into use."""
        with self._changed:
            connections = self.idle.take(older_than=older_than)
            if older_than is None:
                self.closing = True
            self._in_use.update(connections)
        return connections
