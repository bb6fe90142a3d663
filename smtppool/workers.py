"""The pool's workers: loops that carry queued messages over connections.

At most the working connection limit of them run, on the pool's ``ThreadPoolExecutor``.
A worker takes the oldest message and a connection for it: an idle one (the most
recently used), or one it dials when the limit and the dial backoff allow.  When
neither is possible it leaves the message to the workers whose connections work; only
the last worker waits for the next dial, and only while no connection is open does a
message's wait count towards ``pool_timeout`` (:meth:`Workers.expire`).  A worker hands
its connection an iterator of the messages it may pipeline (:meth:`Workers._run_for`),
judges each outcome that comes back with its job (settled, or retried elsewhere under
the :class:`~smtppool.pushback.Pushback` policy), then checks the connection back in.

Every message has exactly one fate: a job is queued, taken by a worker, sending (on the
wire), then done; each change happens under the pool's lock, and only a job that is not
on the wire can be withdrawn (by ``send()``'s timeout, ``pool_timeout`` or ``close()``),
so a message is never sent after its caller was told it failed.  Network I/O never
happens while the lock is held.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .config import Options
from .connection import SMTPConnection
from .connections import DIAL, PoolConnections
from .envelope import SendResult
from .errors import ConnectError, PoolClosedError, SMTPError
from .idle import IdleSlot
from .jobs import DONE, Job, Jobs, settle
from .pushback import Pushback
from .ratelimit import Limiter

__all__ = ["WAIT_STEP", "Workers", "in_worker_thread"]

#: Longest single wait on the pool's condition; every wait loop re-checks.
WAIT_STEP = 1.0

_worker = threading.local()  # .active is True in the pool's worker threads


def in_worker_thread() -> bool:
    """True in one of a pool's worker threads (and so in an ``on_idle`` callback)."""
    return getattr(_worker, "active", False)


class Workers:
    """One pool's worker loops, and the fate of each job they carry."""

    def __init__(
        self,
        options: Options,
        changed: threading.Condition,
        jobs: Jobs,
        connections: PoolConnections,
        pushback: Pushback,
        limiter: Limiter,
        log: logging.Logger,
        *,
        start_housekeeper: Callable[[], None],
    ) -> None:
        self.options = options
        self._changed = changed  # the pool's: its lock guards the jobs and the counts
        self._jobs = jobs
        self._connections = connections
        self._pushback = pushback
        self._limiter = limiter
        self._start_housekeeper = start_housekeeper  # it ends the wait of pool_timeout
        self._log = log
        self._executor = ThreadPoolExecutor(options.max_connections, thread_name_prefix="smtppool")
        self._executor_open = True
        self.running = 0  # worker loops
        self.stopping = False  # close(wait=False), or close() timed out: nothing new starts
        self.counts = dict.fromkeys(("sent", "failed", "retried"), 0)
        #: Whether the latest run stacked transactions (send_many sizes its window by it).
        self.stacking = False

    def shut_down(self) -> None:
        """Start no more loops; wait for the executor's threads when none runs."""
        with self._changed:
            self._executor_open = False
            finished = self.running == 0
        self._executor.shutdown(wait=finished)

    def spawn_locked(self) -> None:
        """Start a worker loop when messages wait and the working limit allows one more."""
        limit = self._pushback.limit.limit
        if self._jobs.waiting and self._executor_open and self.running < limit:
            self.running += 1
            try:
                self._executor.submit(self._loop)
            except RuntimeError:  # the interpreter is shutting down
                self.running -= 1

    def withdraw(self, future: object, error: SMTPError) -> str:
        """Fail the job of ``future`` with ``error`` if it is not on the wire yet; return
        its state before: QUEUED or TAKEN (now withdrawn), SENDING, or DONE (also for a
        job no longer tracked, whose outcome is being settled)."""
        with self._changed:
            job = self._jobs.find(future)
            if job is None:
                return DONE
            state = job.state
            if not self._withdraw_locked([job]):
                return state
            self._changed.notify_all()
        settle(job.future, error)
        return state

    def _withdraw_locked(self, jobs: Iterable[Job]) -> list[Job]:
        withdrawn = self._jobs.withdraw(jobs)
        self.counts["failed"] += len(withdrawn)
        return withdrawn

    def _claim(self, job: Job) -> bool:
        """Put a taken job on the wire: False when it was withdrawn or cancelled meanwhile
        (the caller then calls ``_complete(job, None)``)."""
        with self._changed:
            return self._jobs.claim(job)

    def _complete(self, job: Job, outcome: SendResult | BaseException | None) -> None:
        """A started job is over: count it and free its place (one lock round, before the
        caller can see the outcome), settle it, then tell on_idle.  ``outcome`` is None
        for a job cancelled by its caller; a job already withdrawn is left alone."""
        with self._changed:
            if not self._jobs.finish(job):
                return
            if isinstance(outcome, SendResult):
                self._pushback.delivered()
                self.counts["sent"] += 1
            elif outcome is not None:
                self.counts["failed"] += 1
            has_capacity = len(self._jobs) < self.options.max_connections
        if outcome is not None:
            settle(job.future, outcome)
        if has_capacity and self.options.on_idle is not None:
            try:
                self.options.on_idle()
            except Exception:
                self._log.exception("on_idle callback failed")

    def stop(self, *, cut: bool) -> None:
        """Start nothing more: fail every job not on the wire with PoolClosedError, stop
        the dials (no message needs them now) and, when ``cut``, cut the connections in
        use too, so that the messages on the wire end now."""
        with self._changed:
            self.stopping = True
            withdrawn = self._withdraw_locked(self._jobs.all())
            connections = self._connections.to_abort_locked(in_use=cut)
            self._changed.notify_all()
        reason = "close() timed out before it was sent" if cut else "the pool was closed"
        for job in withdrawn:
            settle(job.future, PoolClosedError(f"not sent: {reason}"))
        for connection in connections:
            connection.abort()
        self._limiter.close()  # a worker waiting for its turn to send wakes, and sends nothing

    # -- the worker --------------------------------------------------------------------

    def _loop(self) -> None:
        """A worker: send waiting messages while it has a connection for them, then end."""
        _worker.active = True
        held: deque[Job] = deque()  # taken by this worker: retries, and dials that failed
        try:
            self._work(held)
        except BaseException:  # a bug: its messages go back to the queue for another worker
            self._log.exception("a pool worker failed")
            with self._changed:
                self._end_locked(held)
                self.spawn_locked()

    def _work(self, held: deque[Job]) -> None:
        connections = self._connections
        while (assignment := self._assign(held)) is not None:
            job, slot = assignment
            held.appendleft(job)  # until it is on the wire: given back if this worker fails
            if slot is None:
                try:
                    connection = connections.dial()
                except BaseException as exc:
                    if not connections.dial_failed(exc):  # else another connection takes it
                        self._complete(held.popleft(), exc)
                    continue
                with self._changed:
                    self.spawn_locked()  # the queue may use one more connection
                reused = False
            else:
                connection, reused = slot.connection, True
                if not connections.keep_if_usable(connection):
                    continue
            held.popleft()
            held.extend(self._send(job, connection, reused))

    def _assign(self, held: deque[Job]) -> tuple[Job, IdleSlot | None] | None:
        """Wait, in bounded steps, until the next message (the first ``held``, else the
        oldest queued) can go: on an idle connection, or on one this worker dials (the
        slot is then None).  None when this worker should end; its held messages are
        then back at the head of the queue."""
        with self._changed:
            while True:
                assignment = self._assign_locked(held, self._pushback.clock())
                if not isinstance(assignment, float):
                    return assignment
                self._changed.wait(assignment)

    def _assign_locked(
        self, held: deque[Job], now: float
    ) -> tuple[Job, IdleSlot | None] | float | None:
        """The assignment, None (end this worker), or how long to wait before asking again."""
        while held and held[0].state == DONE:  # withdrawn while this worker held it
            held.popleft()
        limit = self._pushback.limit
        if limit.grow(now):
            self._log.info(
                "%s:%s: trying %d connection(s) again", self.options.host, self.options.port,
                limit.limit,
            )  # fmt: skip
            self.spawn_locked()
        waiting = self._jobs.waiting
        head = held[0] if held else (waiting[0] if waiting else None)
        if head is None or self.stopping or self.running > limit.limit:
            self._end_locked(held)
            return None
        lent = self._connections.lend_locked(now)
        if lent == DIAL:
            self._start_housekeeper()
        elif lent is None and self._connections.below_limit_locked():
            # Only the dial backoff holds this worker: it dials when that passes, and
            # meanwhile the connections that work may carry what it held.
            self._jobs.give_back(held)
            held.clear()
            return self._wait_step_locked(now)
        elif lent is None and self.running > 1:  # the workers with connections carry it
            self._end_locked(held)
            return None
        elif lent is None:
            return self._wait_step_locked(now)
        job = held.popleft() if held else self._jobs.take()
        assert job is not None
        return job, lent if isinstance(lent, IdleSlot) else None

    def _end_locked(self, held: deque[Job]) -> None:
        self._jobs.give_back(held)
        held.clear()
        self.running -= 1
        self._changed.notify_all()

    def _wait_step_locked(self, now: float) -> float:
        """How long a worker that can do nothing now sleeps, at most."""
        return min(WAIT_STEP, self._pushback.limit.dial_wait(now) or WAIT_STEP)

    def expire(self) -> None:
        """Fail the messages whose wait for a connection is over (none is open, none
        could be opened, and ``pool_timeout`` has passed), queued or held by a worker."""
        pushback = self._pushback
        with self._changed:
            over = [job for job in self._jobs.all() if pushback.wait_over(job.queued_at)]
            withdrawn = self._withdraw_locked(over)
            if not withdrawn:
                return
            waited = pushback.clock() - min(job.queued_at for job in withdrawn)
            error = pushback.no_connection_error(self.options.host, self.options.port, waited)
            self._changed.notify_all()
        for job in withdrawn:
            settle(job.future, error)

    def _send(self, job: Job, connection: SMTPConnection, reused: bool) -> list[Job]:
        """Send ``job`` (and whatever the connection can pipeline behind it) on
        ``connection``, then give the connection back; return the jobs to try again."""
        in_flight: list[Job] = [job]  # this worker's to settle: no outcome yet
        retry: list[Job] = []
        try:
            if reused:
                self._connections.renew(connection)
            self._limiter.acquire()  # a limiter that fails (its store gone) fails the job
            if not self._claim(job):
                in_flight.clear()
                self._complete(job, None)
                return retry
            self.stacking = connection.stacks
            for done, outcome in connection.send_each(self._run_for(connection, in_flight)):
                in_flight.remove(done)
                self._judge_outcome(done, outcome, reused, retry)
            if in_flight:  # a connection gives every item it took an outcome: a bug else
                self._log.error("a connection ended its run without %d outcome(s)", len(in_flight))
                raise ConnectError(
                    "the connection ended its run without this message's outcome",
                    delivery_unknown=True,  # it may have been sent: never sent again
                )
        except BaseException as exc:  # every in_flight message learns its fate, whatever happened
            for done in in_flight:
                self._judge_outcome(done, exc, reused, retry)
        finally:
            self._connections.check_in(connection)
        return retry

    def _run_for(self, connection: SMTPConnection, in_flight: list[Job]) -> Iterator[Job]:
        """The jobs ``connection`` sends in one run: the claimed first, then each waiting
        message the connection has room for (``max_messages``, ``connection_ttl``) and
        the rate limit admits now, as the connection asks for the next."""
        yield in_flight[0]
        while connection.has_room(len(in_flight)):
            with self._changed:
                job = None if self.stopping else self._jobs.take()
            if job is None:
                return
            try:
                allowed = self._limiter.acquire(timeout=0)
            except Exception:  # closed, or undecidable: a worker's own acquire will say
                allowed = False
            if not allowed:  # it must wait its turn: leave it for a worker that can
                with self._changed:
                    self._jobs.give_back([job])
                return
            if self._claim(job):
                in_flight.append(job)
                yield job
            else:
                self._complete(job, None)

    def _judge_outcome(
        self, job: Job, outcome: SendResult | BaseException, reused: bool, retry: list[Job]
    ) -> None:
        """Settle a message, or put it in ``retry`` when the failure proves it was not taken."""
        if isinstance(outcome, SMTPError):
            self._pause_for(outcome)
            if self._take_back_for_retry(job, outcome, reused):
                self._log.info("retrying a message after %s: %s", outcome.code, outcome.message)
                retry.append(job)
                return
            if self.stopping and not outcome.delivery_unknown:
                closed = PoolClosedError("not sent: the pool was closed while sending it")
                closed.__cause__ = outcome
                outcome = closed
        self._complete(job, outcome)

    def _take_back_for_retry(self, job: Job, error: SMTPError, reused: bool) -> bool:
        """Whether ``job`` gets another attempt (the policy's word, unless the pool stops);
        if so it is taken back for it."""
        with self._changed:
            if self.stopping or not self._pushback.grant_retry(
                job.budget, error, reused=reused, replayable=job.payload.replayable
            ):
                return False
            if not self._jobs.retake(job):
                return False
            self.counts["retried"] += 1
            return True

    def _pause_for(self, error: SMTPError) -> None:
        """Pause new messages when ``error`` is the server throttling."""
        with self._changed:
            pause = self._pushback.pause_for(error)
        if pause is None:
            return
        self._log.warning(
            "server throttles (%s); pausing new messages for %.1f s", error.response, pause
        )
        try:
            self._limiter.pause(pause)
        except Exception:  # a shared limiter's store may be unreachable: the message goes on
            self._log.exception("pausing the rate limiter failed")
