"""Idle connections: the pool's sessions waiting for their next message.

The most recently used is taken first (a LIFO: the others age out under
``idle_timeout`` when traffic falls), and those idle since before a time can be taken
out together for retiring.  The pool holds its lock around every call; nothing here
does I/O but :func:`close_all`, the garbage-collection safety net, which only closes
sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .connection import SMTPConnection

__all__ = ["IdleConnections", "IdleSlot", "close_all"]


class IdleSlot(NamedTuple):
    connection: SMTPConnection
    since: float  #: time.monotonic() when it was put back


class IdleConnections:
    """The idle sessions, the most recently used last."""

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: list[IdleSlot] = []

    def __len__(self) -> int:
        return len(self._slots)

    def put_back(self, connection: SMTPConnection, now: float) -> None:
        self._slots.append(IdleSlot(connection, now))

    def take_newest(self) -> IdleSlot | None:
        return self._slots.pop() if self._slots else None

    def take(self, *, older_than: float | None = None) -> list[SMTPConnection]:
        """Take out those idle since before ``older_than``, or all."""
        taken = [s for s in self._slots if older_than is None or s.since < older_than]
        self._slots = [s for s in self._slots if s not in taken]
        return [slot.connection for slot in taken]

    def connections(self) -> list[SMTPConnection]:
        return [slot.connection for slot in self._slots]


def close_all(idle: IdleConnections) -> None:
    """Garbage-collection safety net: close idle sockets (no I/O, nothing can hang)."""
    for connection in idle.take():
        connection.close()
