"""Batch sending: message sources on disk and a runner that accounts for every message.

Sources (``.eml`` files, directories of them, Maildirs, mbox files) are read lazily: each
item is an id plus a loader, to be called before the next item is taken, so a batch
streams and, when it is interrupted, the ids not yet sent can still be listed without
reading their content.  :func:`run_batch` keeps its
own bounded window of futures so that, whatever happens, every message ends up in the
report as ``sent``, ``failed`` or ``not sent``.
"""

from __future__ import annotations

import functools
import hashlib
import mailbox
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .envelope import Envelope, SendResult
from .errors import PoolClosedError, SMTPError
from .pool import SMTPPool

__all__ = ["BatchReport", "Item", "Outcome", "content_digest", "iter_items", "run_batch"]

#: How often a waiting batch checks for Ctrl-C.
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class Item:
    """One message to send: where it comes from, and how to read it."""

    id: str
    load: Callable[[], bytes]


@dataclass
class Outcome:
    """The fate of one message, as written to the JSON report."""

    id: str
    status: str  #: "sent", "failed", "not sent", or "unknown" (abandoned mid-send)
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    response: str | None = None
    error: dict[str, Any] | None = None
    #: The content's digest (:func:`content_digest`) once it was read: what ``--resume``
    #: checks, so a changed file or mbox is not taken for the message already sent.
    digest: str | None = None

    @classmethod
    def of_task(cls, item_id: str, outcome: Mapping[str, Any]) -> Outcome:
        """From a Celery task's outcome (:mod:`smtppool.contrib.celery`)."""
        status = {"delivery_unknown": "unknown"}.get(outcome["status"], outcome["status"])
        error = None
        if outcome["error"] is not None:
            error = {"code": status, "message": outcome["error"], "response": outcome["response"]}
        return cls(item_id, status, list(outcome["accepted"]), list(outcome["rejected"]),
                   outcome["response"], error)  # fmt: skip

    @classmethod
    def of(cls, item_id: str, result: SendResult | BaseException) -> Outcome:
        if isinstance(result, SendResult):
            return cls(
                item_id, "sent", list(result.accepted), list(result.rejected), result.response
            )
        status = "not sent" if isinstance(result, PoolClosedError) else "failed"
        if isinstance(result, SMTPError):
            error: dict[str, Any] = {
                "code": result.code,
                "message": result.message,
                "response": result.response,
                "temporary": result.temporary,
                "delivery_unknown": result.delivery_unknown,
            }
            return cls(item_id, status, response=result.response, error=error)
        return cls(item_id, status, error={"code": type(result).__name__, "message": str(result)})


@dataclass
class BatchReport:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    elapsed: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.count("sent"),
            "failed": self.count("failed"),
            "not_sent": self.count("not sent"),
            "interrupted": self.interrupted,
            "elapsed_seconds": round(self.elapsed, 3),
            "messages": [vars(outcome) for outcome in self.outcomes],
        }


def content_digest(data: bytes) -> str:
    """A message's fingerprint in the report (SHA-256, 128 bits in hex)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _read(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _mailbox_items(box: mailbox.Mailbox[Any], label: str) -> Iterator[Item]:
    """Items whose loaders work while the generator is alive; the box closes after."""
    try:
        for key in box.iterkeys():
            yield Item(f"{label}#{key}", functools.partial(box.get_bytes, key))
    finally:
        box.close()


def iter_items(paths: Iterable[str | Path]) -> Iterator[Item]:
    """Expand paths lazily: a Maildir (has ``cur``/``new``), a directory of ``*.eml``
    files (sorted), an mbox file (its first line starts with "From" and a space), or a
    single message file.

    :raises FileNotFoundError: a path does not exist.
    """
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_dir():
            if (path / "cur").is_dir() and (path / "new").is_dir():
                yield from _mailbox_items(mailbox.Maildir(path, create=False), str(path))
            else:
                for eml in sorted(path.glob("*.eml")):
                    yield Item(str(eml), _read(eml))
        elif path.is_file():
            with open(path, "rb") as file:
                is_mbox = file.read(5) == b"From "
            if is_mbox:
                yield from _mailbox_items(mailbox.mbox(path, create=False), str(path))
            else:
                yield Item(str(path), _read(path))
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")


@contextmanager
def _sigint_as_flag() -> Iterator[threading.Event]:
    """In the main thread, make Ctrl-C set a flag the batch checks between messages, so
    an interruption can never fall between taking a message and recording its fate."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def run_batch(
    pool: SMTPPool,
    items: Iterable[Item],
    *,
    envelope: Envelope | None = None,
    window: int | None = None,
    on_outcome: Callable[[Outcome], object] | None = None,
) -> BatchReport:
    """Send every item through ``pool``, stopping cleanly on Ctrl-C (or KeyboardInterrupt).

    On a first interruption nothing new is submitted, queued messages are cancelled
    (``not sent``), and messages already on the wire are waited for (the pool's timeouts
    bound that); the report says ``interrupted``.  A second interruption abandons that
    wait, and the messages still on the wire are reported ``unknown``.
    """
    report = BatchReport()
    limit = window or 4 * pool.options.max_connections
    pending: deque[tuple[str, str, Future[SendResult]]] = deque()  # id, digest, future
    iterator = iter(items)
    start = time.monotonic()

    def record(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def settle_head(stop: threading.Event | None) -> bool:
        """Record the oldest pending message once done; False if ``stop`` came first."""
        item_id, digest, future = pending[0]
        # wait(), not result(timeout): on Python 3.11+ the wait's TimeoutError is the
        # class an SMTPTimeoutError outcome derives from, and the two must not mix.
        while stop is not None and not stop.is_set() and not future.done():
            wait_for_futures([future], POLL_INTERVAL)
        if stop is not None and stop.is_set() and not future.done():
            return False
        try:
            outcome = Outcome.of(item_id, future.result())
        except Exception as exc:
            outcome = Outcome.of(item_id, exc)
        outcome.digest = digest
        record(outcome)
        pending.popleft()
        return True

    with _sigint_as_flag() as stop:
        try:
            for item in iterator:
                if stop.is_set():
                    record(Outcome.of(item.id, PoolClosedError("interrupted before sending")))
                    break
                try:
                    data = item.load()
                    pending.append((item.id, content_digest(data), pool.submit(data, envelope)))
                except (ValueError, OSError) as exc:  # unreadable file, no envelope
                    record(Outcome.of(item.id, exc))
                while len(pending) >= limit and settle_head(stop):
                    pass
            while pending and settle_head(stop):
                pass
        except KeyboardInterrupt:  # raised directly when not in the main thread
            stop.set()
    if stop.is_set():
        report.interrupted = True
        pool.close(wait=False)  # queued futures fail with PoolClosedError at once
        try:
            while pending:
                settle_head(None)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the wire
            for item_id, _, _ in pending:
                record(
                    Outcome(
                        item_id,
                        "unknown",
                        error={
                            "code": "EINTERRUPTED",
                            "message": "abandoned while being sent",
                            "delivery_unknown": True,
                        },
                    )
                )
        for item in iterator:
            record(Outcome.of(item.id, PoolClosedError("interrupted before sending")))
    report.elapsed = time.monotonic() - start
    return report
