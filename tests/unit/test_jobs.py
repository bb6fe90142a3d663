"""The pool's jobs and their states, moved without a pool: no sockets, no threads."""

from __future__ import annotations

from concurrent.futures import Future

from smtppool.envelope import Envelope
from smtppool.jobs import DONE, QUEUED, SENDING, TAKEN, Job, Jobs, Payload


def job(i: int) -> Job:
    return Job(Payload(b"m%d\r\n" % i), Envelope("a@x.org", "b@x.org"), Future(), float(i))


def test_a_job_lives_queued_taken_sending_done() -> None:
    jobs, first, second = Jobs(), job(1), job(2)
    jobs.add(first)
    jobs.add(second)
    assert jobs.take() is first and first.state == TAKEN and len(jobs) == 2
    assert jobs.claim(first) and first.state == SENDING and first.future.running()
    assert jobs.finish(first) and first.state == DONE and len(jobs) == 1
    assert not jobs.finish(first)  # once
    assert second.state == QUEUED and jobs.all() == [second]


def test_taken_jobs_go_back_to_the_head_in_their_order() -> None:
    jobs, items = Jobs(), [job(i) for i in range(4)]
    for item in items:
        jobs.add(item)
    taken = [jobs.take(), jobs.take()]
    jobs.give_back(taken)  # type: ignore[arg-type]
    assert list(jobs.waiting) == items and all(j.state == QUEUED for j in items)


def test_only_a_job_off_the_wire_is_withdrawn() -> None:
    jobs, items = Jobs(), [job(i) for i in range(3)]
    for item in items:
        jobs.add(item)
    sending, taken, queued = jobs.take(), jobs.take(), items[2]
    assert sending is not None and jobs.claim(sending)
    assert jobs.withdraw(jobs.all()) == [queued, taken]
    assert sending.state == SENDING and taken.state == queued.state == DONE
    assert jobs.all() == [sending] and not jobs.waiting


def test_a_cancelled_or_withdrawn_job_is_not_claimed_and_a_retry_needs_it_alive() -> None:
    jobs, cancelled, withdrawn = Jobs(), job(1), job(2)
    for item in (cancelled, withdrawn):
        jobs.add(item)
        assert jobs.take() is item
    cancelled.future.cancel()
    assert not jobs.claim(cancelled)
    jobs.withdraw([withdrawn])
    assert not jobs.claim(withdrawn) and not jobs.retake(withdrawn)
    assert jobs.find(withdrawn.future) is None and jobs.find(cancelled.future) is cancelled


def test_the_content_of_each_attempt_is_the_whole_message() -> None:
    item = job(7)
    assert item.content() == item.content() == b"m7\r\n"
