"""Jobs: one message on its way through the pool, and the future its caller holds.

A :class:`Job` carries the message (a :class:`Payload` that can be replayed for a retry
while it was not consumed), its envelope, its future and its state.  :class:`Jobs`
holds the pool's jobs and moves each through its life, QUEUED -> TAKEN -> SENDING ->
DONE, under the pool's lock; only a job that is not on the wire can be withdrawn.
:func:`settle` completes a future once.  Plain values and a thread-safe completion; no
sockets.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import InvalidStateError
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO, Protocol, cast

from .envelope import Envelope, SendResult
from .errors import SMTPError
from .message import MessageInput
from .pushback import RetryBudget

__all__ = [
    "DONE",
    "QUEUED",
    "SENDING",
    "TAKEN",
    "Completion",
    "Job",
    "Jobs",
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
        """The message for one more attempt: a seekable file rewound, another file or
        iterable watched so that its first read marks the payload consumed (the reading
        and chunking itself is :func:`~smtppool.message.prepare_message`'s, as for
        any message)."""
        message = self.message
        if isinstance(message, _BYTES_LIKE):
            return message
        if self.rewind_to is not None:
            cast(BinaryIO, message).seek(self.rewind_to)
            return message
        if isinstance(message, io.TextIOBase):  # refused as it is, before MAIL
            return message
        if hasattr(message, "read"):
            return cast(BinaryIO, _WatchedFile(cast(BinaryIO, message), self))
        return self._tracked(message)

    def _tracked(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.started = True
            yield chunk


class _WatchedFile:
    """A file that cannot be rewound, read through: its first read consumes the payload."""

    def __init__(self, file: BinaryIO, payload: Payload) -> None:
        self._file = file
        self._payload = payload

    def read(self, size: int = -1) -> bytes:
        self._payload.started = True
        return self._file.read(size)

    def __getattr__(self, name: str) -> Any:  # tell, seekable, fileno, mode...
        return getattr(self._file, name)


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
    budget: RetryBudget = field(default_factory=RetryBudget)
    running: bool = False  # its future was told it runs (on the first attempt)

    def content(self) -> MessageInput:
        """The message for this attempt (what a connection sends; see Payload.attempt)."""
        return self.payload.attempt()


class Jobs:
    """The pool's jobs: queued ones oldest first, and those started (taken by a worker,
    or on the wire).  Not thread-safe: the pool calls it under its lock, and settles
    futures outside it."""

    __slots__ = ("started", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[Job] = deque()
        self.started: set[Job] = set()

    def __len__(self) -> int:
        """Jobs queued or started."""
        return len(self.waiting) + len(self.started)

    def add(self, job: Job) -> None:
        self.waiting.append(job)

    def take(self) -> Job | None:
        """The oldest queued job, now TAKEN by the calling worker."""
        if not self.waiting:
            return None
        job = self.waiting.popleft()
        job.state = TAKEN
        self.started.add(job)
        return job

    def give_back(self, jobs: Iterable[Job]) -> None:
        """Put taken jobs back at the head of the queue, in their order."""
        for job in reversed(list(jobs)):
            if job.state == TAKEN:
                job.state = QUEUED
                self.started.discard(job)
                self.waiting.appendleft(job)

    def claim(self, job: Job) -> bool:
        """Put a taken job on the wire: False when it was withdrawn or its future
        cancelled meanwhile (the caller then finishes it without an outcome)."""
        if job.state != TAKEN:
            return False
        if not job.running and not job.future.set_running_or_notify_cancel():
            return False
        job.state, job.running = SENDING, True
        return True

    def retake(self, job: Job) -> bool:
        """Take a failed attempt's job back for another; False when it is already done."""
        if job.state == DONE:
            return False
        job.state = TAKEN
        return True

    def finish(self, job: Job) -> bool:
        """A started job is over; False when it already was (withdrawn meanwhile)."""
        if job.state == DONE:
            return False
        job.state = DONE
        self.started.discard(job)
        return True

    def withdraw(self, jobs: Iterable[Job]) -> list[Job]:
        """Mark the jobs among ``jobs`` that are not on the wire DONE, out of the queue;
        the caller fails them."""
        withdrawn = [job for job in jobs if job.state in (QUEUED, TAKEN)]
        queued = {job for job in withdrawn if job.state == QUEUED}
        if queued:
            self.waiting = deque(job for job in self.waiting if job not in queued)
        for job in withdrawn:
            job.state = DONE
            self.started.discard(job)
        return withdrawn

    def all(self) -> list[Job]:
        """Every job queued or started, oldest queued first."""
        return [*self.waiting, *self.started]

    def find(self, future: object) -> Job | None:
        """The job of ``future``, while it is queued or started."""
        return next((job for job in self.all() if job.future is future), None)


def settle(future: Settleable, outcome: SendResult | BaseException) -> None:
    """Complete ``future`` unless it already is (cancelled, or failed by close)."""
    try:
        if isinstance(outcome, SendResult):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)
    except InvalidStateError:
        pass
