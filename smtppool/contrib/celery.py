"""Send through SMTPPool from Celery workers, with limits shared by every worker.

Each worker process owns one pool for its whole life: created on
``worker_process_init`` (after the fork), closed on ``worker_process_shutdown``, and
never used across a fork (a pool found in a process that did not create it is
replaced).  Its rate limit and connection cap live in Redis
(:class:`~smtppool.contrib.redis_limiter.RedisLimiter`), so they hold across processes
and hosts.

Messages travel as JSON-safe dicts (:func:`encode`): the raw bytes in base64 with an
explicit envelope and an idempotency key, never pickled objects.  The task is
acks-late and rejected when its worker dies, so a killed worker's chunk is delivered
again; a Redis record per message ("sending" before it is handed to the pool, "sent"
after the 250) makes the second run skip what was sent and report what may have been
sent as ``delivery_unknown`` instead of sending it twice.  Temporary failures are
retried by Celery with exponential backoff and jitter, permanent ones are not, and a
``delivery_unknown`` never is.

Ready to run: ``celery -A smtppool.contrib.celery worker`` configured by environment
(``SMTPPOOL_URL``, ``SMTPPOOL_BROKER``, ...: see :func:`settings_from_env`); or call
:func:`register` on your own app.  :func:`send_batch` splits a batch into chunks.

Needs the ``celery`` extra (``pip install 'smtppool[celery]'``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, TypedDict

import redis
from celery import Celery, Task, group, signals
from celery.result import GroupResult

from ..config import Options
from ..envelope import Envelope, SendResult, pair_with_envelope
from ..errors import PoolClosedError, SMTPError
from ..message import flatten_message
from ..pool import SMTPPool
from .redis_limiter import RedisLimiter

__all__ = [
    "BatchResult",
    "MessageOutcome",
    "WorkerSettings",
    "encode",
    "register",
    "send_batch",
    "send_chunk",
    "settings_from_env",
]

log = logging.getLogger("smtppool")

#: Celery's retry schedule for temporary failures: base * 2**n seconds, capped, jittered.
RETRY_BASE = 2.0
RETRY_CAP = 300.0
MAX_RETRIES = 8
#: How long a "sending"/"sent" record is kept (a redelivery comes well before this).
RECORD_TTL = 7 * 24 * 3600
#: Longest wait for one message's outcome (the pool's own timeouts end it long before).
RESULT_TIMEOUT = 3600.0


class MessageOutcome(TypedDict):
    """What the task reports for one message (JSON-safe)."""

    key: str
    #: "sent", "failed", or "delivery_unknown" (it may have been accepted: not retried).
    status: str
    response: str | None
    error: str | None
    accepted: list[str]
    rejected: list[str]


def encode(
    message: bytes | str | Message, envelope: Any = None, *, key: str | None = None
) -> dict[str, Any]:
    """A message as a JSON-safe task argument: raw bytes (base64), envelope and key.

    The envelope is derived from the headers when not given (Bcc is stripped, as the
    pool does); the key defaults to the Message-ID, or a fresh UUID without one.
    """
    prepared, env = pair_with_envelope(message, envelope)
    raw = prepared
    if isinstance(prepared, Message):  # as the pool flattens it: UTF-8 headers for SMTPUTF8
        raw = flatten_message(prepared, international=env.is_international)
    if not isinstance(raw, bytes):
        raise TypeError("encode() takes bytes, str or email.message.Message")
    if key is None:
        key = BytesHeaderParser().parsebytes(raw).get("Message-ID") or uuid.uuid4().hex
    return {
        "key": str(key).strip(),
        "from": env.mail_from,
        "to": list(env.rcpt_to),
        "raw": base64.b64encode(raw).decode("ascii"),
    }


@dataclass(frozen=True)
class WorkerSettings:
    """How each worker process builds its pool and reaches Redis."""

    #: Keywords for :class:`~smtppool.SMTPPool` (``url=`` included).
    pool: Mapping[str, Any]
    #: Redis for the shared limits and the idempotency records.
    redis_url: str
    #: Shared limits: messages per ``rate_delta`` seconds, and open connections.
    rate_limit: int | None = None
    rate_delta: int = 1
    max_connections: int | None = None
    #: Names the shared limits (e.g. the account); defaults to the pool's host.
    limit_key: str | None = None
    #: Per-process share of the rate when Redis is unreachable (None: fail closed).
    fallback_processes: int | None = None


def settings_from_env(environ: Mapping[str, str] = os.environ) -> WorkerSettings:
    """``SMTPPOOL_URL`` (the pool, an ``smtp://`` URL with options), ``SMTPPOOL_REDIS``
    (default: ``SMTPPOOL_BROKER``, default ``redis://localhost:6379/0``),
    ``SMTPPOOL_RATE_LIMIT``, ``SMTPPOOL_RATE_DELTA``, ``SMTPPOOL_SHARED_CONNECTIONS``,
    ``SMTPPOOL_LIMIT_KEY``, ``SMTPPOOL_FALLBACK_PROCESSES``."""

    def number(name: str) -> int | None:
        value = environ.get(name)
        return int(value) if value else None

    return WorkerSettings(
        pool={"url": environ.get("SMTPPOOL_URL", "smtp://localhost:25")},
        redis_url=environ.get("SMTPPOOL_REDIS") or broker_url(environ),
        rate_limit=number("SMTPPOOL_RATE_LIMIT"),
        rate_delta=number("SMTPPOOL_RATE_DELTA") or 1,
        max_connections=number("SMTPPOOL_SHARED_CONNECTIONS"),
        limit_key=environ.get("SMTPPOOL_LIMIT_KEY"),
        fallback_processes=number("SMTPPOOL_FALLBACK_PROCESSES"),
    )


def broker_url(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("SMTPPOOL_BROKER", "redis://localhost:6379/0")


class _Worker:
    """The pool and Redis client of one worker process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        options = Options.from_settings(**settings.pool)
        limiter = None
        if settings.rate_limit is not None or settings.max_connections is not None:
            limiter = RedisLimiter(
                settings.redis_url,
                key=settings.limit_key or f"{options.host}:{options.port}",
                rate_limit=settings.rate_limit,
                rate_delta=settings.rate_delta,
                max_connections=settings.max_connections,
                fallback_processes=settings.fallback_processes,
            )
        self.pool = SMTPPool(options=options, rate_limiter=limiter)

    def close(self) -> None:
        self.pool.close()
        self.redis.close()


class _Records:
    """Idempotency records in Redis: ``sending`` before the pool gets a message,
    ``sent`` after the 250, deleted when a failure proves nothing was delivered."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def _name(self, key: str) -> str:
        return f"smtppool:{self.namespace}:message:{key}"

    def begin(self, key: str) -> str | None:
        """Mark ``key`` as sending and return None, or return its earlier state."""
        name = self._name(key)
        if self.client.set(name, b"sending", nx=True, ex=RECORD_TTL):
            return None
        state = self.client.get(name)
        return state.decode() if isinstance(state, bytes) else "sending"

    def sent(self, key: str) -> None:
        try:
            self.client.set(self._name(key), b"sent", ex=RECORD_TTL)
        except redis.RedisError as exc:  # it was sent: say so, and that a rerun may repeat it
            log.warning("message %s was sent but its record was not written: %s", key, exc)

    def forget(self, key: str) -> None:
        try:
            self.client.delete(self._name(key))
        except redis.RedisError as exc:  # a rerun will report it delivery_unknown
            log.warning("record of unsent message %s not cleared: %s", key, exc)


def _outcome(key: str, status: str, result: SendResult | BaseException | str) -> MessageOutcome:
    if isinstance(result, SendResult):
        return MessageOutcome(
            key=key, status=status, response=result.response, error=None,
            accepted=list(result.accepted), rejected=list(result.rejected),
        )  # fmt: skip
    response = result.response if isinstance(result, SMTPError) else None
    return MessageOutcome(key=key, status=status, response=response, error=str(result),
                          accepted=[], rejected=[])  # fmt: skip


def _status(error: BaseException) -> str:
    """What a failed message becomes, judged by the error's attributes alone (never its
    class: on Python 3.11+ ``SMTPTimeoutError`` is a ``concurrent.futures.TimeoutError``):
    "delivery_unknown" (may have been accepted: never sent again), "again" (nothing was
    accepted and a later attempt may succeed), or "failed"."""
    if isinstance(error, SMTPError):
        if error.delivery_unknown:
            return "delivery_unknown"
        if error.temporary or error.code == PoolClosedError.code:
            return "again"
    return "failed"


def _decode(item: object) -> tuple[str, bytes, Envelope]:
    """An encoded item's key, content and envelope.

    :raises ValueError: an item that cannot be sent (not a mapping, no key, bad base64,
        a CR or LF in an address).
    """
    if not isinstance(item, Mapping):
        raise ValueError(f"not an encoded message: {type(item).__name__}, not a mapping")
    key = item.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("not an encoded message: no key")
    try:
        raw = base64.b64decode(item["raw"], validate=True)
        return key, raw, Envelope(item["from"], item["to"])
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an encoded message: {exc!r}") from exc


def send_chunk(
    pool: SMTPPool, records: _Records, items: Sequence[Mapping[str, Any]]
) -> tuple[list[MessageOutcome], list[Mapping[str, Any]]]:
    """Send a chunk of encoded messages through ``pool``; return the outcomes of the
    messages whose fate is known, and the items to try again later.

    A message is recorded "sending" only shortly before the pool gets it (at most one
    waiting behind each connection, which is what lets the pool pipeline it), "sent"
    after its 250, and forgotten when its failure proves nothing was delivered; only a
    message whose fate is unknown keeps its "sending" record: what an interruption
    (a worker shutting down, a time limit) leaves pending, too, since it propagates.  An
    item that cannot be sent fails alone; the rest of the chunk goes on.
    """
    outcomes: list[MessageOutcome] = []
    again: list[Mapping[str, Any]] = []
    pending: deque[tuple[str, Mapping[str, Any], Future[SendResult]]] = deque()
    window = 2 * pool.options.max_connections

    def settle(key: str, item: Mapping[str, Any], future: Future[SendResult]) -> None:
        try:
            result = pool.result(future, RESULT_TIMEOUT)
        except Exception as exc:
            if not isinstance(exc, SMTPError) and not (
                future.done() and future.exception() is exc
            ):  # not the message's outcome (an interruption): its record stays "sending"
                raise
            status = _status(exc)
            if status != "delivery_unknown":  # the record stays "sending": never sent again
                records.forget(key)
            if status == "again":
                again.append(item)
            else:
                outcomes.append(_outcome(key, status, exc))
            return
        records.sent(key)
        outcomes.append(_outcome(key, "sent", result))

    unreachable: redis.RedisError | None = None
    for item in items:
        try:
            key, raw, envelope = _decode(item)
        except ValueError as exc:
            fallback = item.get("key") if isinstance(item, Mapping) else None
            outcomes.append(_outcome(str(fallback or ""), "failed", exc))
            continue
        if unreachable is not None:  # no record, no sending: try the rest later
            again.append(item)
            continue
        try:
            earlier = records.begin(key)
        except redis.RedisError as exc:
            log.warning("Redis unreachable (%s); the chunk's rest will be retried", exc)
            unreachable = exc
            again.append(item)
            continue
        if earlier == "sent":
            outcomes.append(_outcome(key, "sent", "already sent by an earlier delivery"))
            continue
        if earlier is not None:
            unknown = "an earlier run of this task stopped while sending it"
            outcomes.append(_outcome(key, "delivery_unknown", unknown))
            continue
        try:
            pending.append((key, item, pool.submit(raw, envelope)))
        except (SMTPError, ValueError, TypeError) as exc:  # refused before it was queued
            records.forget(key)
            if _status(exc) == "again":
                again.append(item)
            else:
                outcomes.append(_outcome(key, "failed", exc))
        while len(pending) >= window:
            settle(*pending.popleft())
    while pending:
        settle(*pending.popleft())
    return outcomes, again


def register(
    app: Celery,
    settings: WorkerSettings | Callable[[], WorkerSettings],
    *,
    name: str = "smtppool.send_messages",
    max_retries: int = MAX_RETRIES,
) -> Task:
    """Register the sending task on ``app`` and the worker signals that own the pool.

    ``settings`` may be a callable, read in each worker process (e.g. from the
    environment).  Returns the task: call ``task.delay([encode(msg), ...])`` or use
    :func:`send_batch`.
    """
    state: dict[str, _Worker] = {}
    lock = threading.Lock()

    def worker() -> _Worker:
        with lock:
            current = state.get("worker")
            if current is None or current.pid != os.getpid():  # never across a fork
                resolved = settings() if callable(settings) else settings
                current = state["worker"] = _Worker(resolved)
            return current

    def start(**_: Any) -> None:
        worker()

    def stop(**_: Any) -> None:
        with lock:
            current = state.pop("worker", None)
        if current is not None and current.pid == os.getpid():
            current.close()

    signals.worker_process_init.connect(start, weak=False)
    signals.worker_process_shutdown.connect(stop, weak=False)

    @app.task(  # type: ignore[untyped-decorator]
        name=name, bind=True, acks_late=True, reject_on_worker_lost=True,
        max_retries=max_retries,
    )  # fmt: skip
    def send_messages(
        task: Task, items: Sequence[Mapping[str, Any]], settled: list[MessageOutcome] | None = None
    ) -> list[MessageOutcome]:
        """Send a chunk; return one outcome per message (retried ones included)."""
        current = worker()
        outcomes, again = send_chunk(current.pool, _Records(current.redis, name), items)
        outcomes = [*(settled or []), *outcomes]
        if again:
            retries = task.request.retries
            if retries < max_retries:
                countdown = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**retries))
                log.info("retrying %d message(s) in %.1f s", len(again), countdown)
                raise task.retry(args=(again,), kwargs={"settled": outcomes}, countdown=countdown)
            outcomes += [_outcome(item["key"], "failed", "temporary failures: retries spent")
                         for item in again]  # fmt: skip
        return outcomes

    return send_messages


class BatchResult:
    """The chunks of one batch in flight; :meth:`outcomes` waits for them."""

    def __init__(self, result: GroupResult, keys: list[str]) -> None:
        self.result = result
        self.keys = keys

    def iter_outcomes(self, timeout: float = RESULT_TIMEOUT) -> Iterator[MessageOutcome]:
        """Outcomes as their chunks finish (chunk by chunk, in chunk order).

        :raises celery.exceptions.TimeoutError: ``timeout`` seconds passed in all.
        """
        deadline = time.monotonic() + timeout
        for chunk in self.result.results:
            remaining = max(deadline - time.monotonic(), 0.001)
            yield from chunk.get(timeout=remaining, propagate=True)

    def outcomes(self, timeout: float = RESULT_TIMEOUT) -> list[MessageOutcome]:
        """One outcome per message, in the order they were given."""
        by_key = {outcome["key"]: outcome for outcome in self.iter_outcomes(timeout)}
        return [by_key[key] for key in self.keys]


def send_batch(
    task: Task, messages: Iterable[Mapping[str, Any]], *, chunk_size: int = 50
) -> BatchResult:
    """Enqueue encoded messages (see :func:`encode`) as a group of chunks."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    items = list(messages)
    keys = [item["key"] for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("every message of a batch needs its own key (Message-ID)")
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    result = group(task.s(chunk) for chunk in chunks).apply_async()
    return BatchResult(result, keys)


def make_app(environ: Mapping[str, str] = os.environ) -> Celery:
    """The ready app: Redis broker and results, JSON only, acks late, one task at a time
    per process (``worker_prefetch_multiplier = 1``) so a dead worker strands little."""
    broker = broker_url(environ)
    celery_app = Celery(
        "smtppool",
        broker=broker,
        backend=environ.get("SMTPPOOL_RESULTS", broker),
        set_as_current=False,  # importing this module must not replace the user's app
    )
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": int(environ.get("SMTPPOOL_VISIBILITY_TIMEOUT", "3600"))
        },
        broker_connection_retry_on_startup=True,
    )
    return celery_app


#: ``celery -A smtppool.contrib.celery worker`` runs this app.
app = make_app()
send_messages = register(app, lambda: settings_from_env())
