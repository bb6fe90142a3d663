"""Jobs: one message on its way through the pool, and the future its caller holds.

A :class:`Job` carries the message (a :class:`Payload` that can be replayed for a retry
while it was not consumed), its envelope, its future and its state; the pool changes
the state under its lock, QUEUED -> TAKEN -> SENDING -> DONE, and only a job that is
not on the wire can be withdrawn.  :func:`settle` completes a future once.
Plain values and a thread-safe completion; no sockets.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import InvalidStateError
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO, Protocol, cast

from .envelope import Envelope, SendResult
from .errors import SMTPError
from .message import CHUNK_BYTES, MessageInput

__all__ = [
    "DONE",
    "QUEUED",
    "SENDING",
    "TAKEN",
    "Completion",
    "Job",
    "Payload",
    "Settleable",
    "settle",
]

_BYTES_LIKE = (bytes, bytearray, memoryview, str, Message)

# A job's life; it changes only under the pool's lock.
QUEUED, TAKEN, SENDING, DONE = "queued", "taken", "sending", "done"


class Payload:
    """A message offered to one or more attempts: rewound, or refused once consumed."""

    def __init__(self, message: MessageInput) -> None:
        self.message = message
        self.rewind_to: int | None = None
        self.started = False
        if not isinstance(message, _BYTES_LIKE) and hasattr(message, "seekable"):
            try:
                file = cast(BinaryIO, message)
                if file.seekable():
                    self.rewind_to = file.tell()
            except (OSError, ValueError):
                pass

    @property
    def replayable(self) -> bool:
        return (
            isinstance(self.message, _BYTES_LIKE) or self.rewind_to is not None or not self.started
        )

    def attempt(self) -> MessageInput:
        message = self.message
        if isinstance(message, _BYTES_LIKE):
            return message
        if self.rewind_to is not None:
            cast(BinaryIO, message).seek(self.rewind_to)
            return message
        if hasattr(message, "read"):
            read = functools.partial(cast(BinaryIO, message).read, CHUNK_BYTES)
            return self._tracked(iter(read, b""))
        return self._tracked(message)

    def _tracked(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.started = True
            yield chunk


class Settleable(Protocol):
    """What a worker needs of a message's completion: a Future, or send_many's Completion."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: SendResult) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...


class Completion:
    """send_many's one-shot completion: settled once, waited for once, never cancelled.

    A lock held until the outcome is in; a Future builds a Condition and takes its lock
    three times, about eight times the cost, which shows at thousands of messages a second.
    """

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._outcome: SendResult | BaseException | None = None

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: SendResult | BaseException | None) -> None:
        if self._outcome is None:  # the first settlement counts, as with a Future
            self._outcome = result
            self._done.release()

    set_exception = set_result

    @property
    def settled(self) -> bool:
        return self._outcome is not None

    def wait(self) -> None:
        with self._done:
            pass

    def outcome(self) -> SendResult | SMTPError:
        """Wait for the outcome; an error that is not an SMTPError is raised."""
        self.wait()
        outcome = self._outcome
        if isinstance(outcome, BaseException) and not isinstance(outcome, SMTPError):
            raise outcome
        assert outcome is not None
        return outcome


@dataclass(eq=False, slots=True)
class Job:
    payload: Payload
    envelope: Envelope
    future: Settleable
    queued_at: float
    state: str = QUEUED
    retries_used: int = 0
    stale_allowance: int = 1  # a reused connection found dead costs no retry
    running: bool = False  # its future was told it runs (on the first attempt)


def settle(future: Settleable, outcome: SendResult | BaseException) -> None:
    """Complete ``future`` unless it already is (cancelled, or failed by close)."""
    try:
        if isinstance(outcome, SendResult):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)
    except InvalidStateError:
        pass
