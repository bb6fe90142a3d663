"""The pool's answers to pushback, decided with plain numbers: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from smtppool import (
    AuthenticationError,
    ConnectError,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPTimeoutError,
)
from smtppool.errors import SMTPError
from smtppool.pushback import (
    ConnectionLimit,
    Pushback,
    RetryBudget,
    Throttle,
    is_connection_cap,
    is_retryable,
    is_throttling,
)


def refusal(
    reply: str, cls: type[SMTPError] = ConnectError, command: str | None = None
) -> SMTPError:
    return cls("refused", response=reply, response_code=int(reply[:3]), command=command)


CAPS = [
    ("421 4.7.0 host: Error: too many connections from 10.0.0.1", ConnectError),  # Postfix
    ("421 4.3.2 The maximum number of concurrent server connections has exceeded", ConnectError),
    ("421 Too many concurrent SMTP connections; please try again later.", ConnectError),  # Exim
    ("421 4.7.0 Try again later, closing connection.", ConnectError),  # Gmail
    ("432 4.3.2 Concurrent connections limit exceeded.", AuthenticationError),  # Outlook, AUTH
    ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", ProtocolError),
]
NOT_CAPS = [
    ("421 Service not available, closing transmission channel", ConnectError),
    ("421 4.4.2 idle timeout", ConnectError),
    ("450 4.7.1 Client host rejected: cannot find your hostname", ProtocolError),
    ("554 5.7.1 No SMTP service here", ConnectError),
    ("454 4.7.0 Temporary authentication failure", AuthenticationError),
]


@pytest.mark.parametrize(("reply", "cls"), CAPS)
def test_replies_that_mean_too_many_connections(reply: str, cls: type[SMTPError]) -> None:
    assert is_connection_cap(refusal(reply, cls), others_open=0)


@pytest.mark.parametrize(("reply", "cls"), NOT_CAPS)
def test_replies_that_do_not(reply: str, cls: type[SMTPError]) -> None:
    assert not is_connection_cap(refusal(reply, cls), others_open=3)


def test_a_hang_up_before_any_reply_is_a_cap_only_while_others_are_open() -> None:
    hung_up = ConnectError("connection closed by the server while waiting for the greeting")
    assert is_connection_cap(hung_up, others_open=2)
    assert not is_connection_cap(hung_up, others_open=0)  # the server may just be down
    assert not is_connection_cap(ConnectError("no such host", code="EDNS"), others_open=2)
    assert not is_connection_cap(SMTPTimeoutError("timed out connecting"), others_open=2)


def test_what_is_retried() -> None:
    assert is_retryable(ConnectError("connection reset"))
    assert is_retryable(SMTPTimeoutError("timed out waiting for a reply"))
    assert is_retryable(refusal("421 4.3.2 shutting down"))
    assert not is_retryable(refusal("554 5.7.1 no SMTP service here"))  # permanent
    assert not is_retryable(ConnectError("lost after the dot", delivery_unknown=True))
    assert not is_retryable(refusal("451 4.3.0 try later", EnvelopeError))  # a verdict
    assert not is_retryable(refusal("552 5.3.4 too big", MessageError))


def test_what_throttles() -> None:
    assert is_throttling(refusal("421 4.7.0 slow down"))
    assert is_throttling(refusal("454 4.7.0 TLS not available"))
    assert is_throttling(refusal("451 4.7.1 rate limited", EnvelopeError, "MAIL FROM:<a@x>"))
    assert not is_throttling(refusal("450 4.1.1 mailbox busy", EnvelopeError, "RCPT TO:<b@x>"))
    assert not is_throttling(refusal("550 5.7.1 no", EnvelopeError, "MAIL FROM:<a@x>"))


def test_throttle_pause_doubles_and_resets_once_messages_flow() -> None:
    throttle = Throttle(first=1.0, most=30.0)
    assert [throttle.next_pause() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    throttle.flowing()
    assert throttle.next_pause() == 1.0


def test_a_cap_lowers_the_limit_to_what_is_open_then_it_creeps_back() -> None:
    limit = ConnectionLimit(5, recovery=10.0)
    assert limit.may_dial(0.0, open_=2, dialing=2)
    assert limit.dial_failed(0.0, open_=2, cap=True)  # lowered...
    assert (limit.limit, limit.capped) == (2, True)
    assert not limit.may_dial(0.5, open_=2, dialing=0)  # ...so no third dial
    assert not limit.dial_failed(0.1, open_=2, cap=True)  # the same wave: no further change
    assert not limit.grow(9.0)  # quiet for 8.9 s only: the second refusal restarted the clock
    assert limit.grow(10.2) and limit.limit == 3  # additive increase, one per quiet period
    assert not limit.grow(15.0)
    assert limit.grow(20.2) and limit.limit == 4
    assert limit.dial_failed(21.0, open_=3, cap=True) and limit.limit == 3  # probe refused
    assert limit.grow(31.0) and limit.grow(41.0) and limit.limit == 5
    assert not limit.capped and not limit.grow(1000.0)  # never past max_connections


def test_a_cap_with_nothing_open_keeps_one_connection() -> None:
    limit = ConnectionLimit(5)
    assert limit.dial_failed(0.0, open_=0, cap=True)
    assert limit.limit == 1
    limit.dialled(open_=3)  # dials already under way got through: the server allows 3
    assert limit.limit == 3


def test_failed_dials_are_probed_one_at_a_time_with_growing_backoff() -> None:
    limit = ConnectionLimit(5, backoff=0.25, max_backoff=2.0)
    waits = []
    now = 0.0
    for _ in range(6):
        assert not limit.dial_failed(now, open_=0, cap=False)  # not a cap: the limit stays
        waits.append(limit.dial_wait(now))
        assert not limit.may_dial(now, open_=0, dialing=0)
        now += waits[-1]
        assert limit.may_dial(now, open_=0, dialing=0)
        assert not limit.may_dial(now, open_=0, dialing=1)  # one probe at a time
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert limit.limit == 5
    limit.dialled(open_=1)
    assert limit.may_dial(now, open_=1, dialing=3) and limit.dial_wait(now) == 0


def test_pool_timeout_counts_only_while_nothing_is_open() -> None:
    limit = ConnectionLimit(5)
    assert limit.wait_ends(queued_at=0.0, pool_timeout=30.0) is None
    limit.dial_failed(5.0, open_=2, cap=False)  # connections are open: nobody waits in vain
    assert limit.wait_ends(0.0, 30.0) is None
    limit.dial_failed(8.0, open_=0, cap=False)  # nothing open, and a dial failed
    assert limit.wait_ends(0.0, 30.0) == 38.0  # an old message waits 30 s from the outage
    assert limit.wait_ends(20.0, 30.0) == 50.0  # a later one 30 s from its own arrival
    assert limit.wait_ends(0.0, None) is None  # pool_timeout=None: wait as long as it takes
    limit.dial_failed(9.0, open_=0, cap=False)
    assert limit.wait_ends(0.0, 30.0) == 38.0  # the outage started at the first failure
    limit.dialled(open_=1)
    assert limit.wait_ends(0.0, 30.0) is None


def test_a_limit_needs_a_ceiling() -> None:
    with pytest.raises(ValueError):
        ConnectionLimit(0)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(retries: int = 2, pool_timeout: float | None = 30.0) -> tuple[Pushback, Clock]:
    clock = Clock()
    return Pushback(5, retries, pool_timeout, clock=clock), clock


LOST = ConnectError("connection lost")
LOST_AFTER_DATA = ConnectError("lost after the end of data", delivery_unknown=True)


def test_a_retry_spends_the_budget_and_a_dead_reused_connection_costs_nothing() -> None:
    pushback, _ = policy(retries=2)
    budget = RetryBudget()
    # The first failure on a reused connection is free (it died while idle).
    assert pushback.grant_retry(budget, LOST, reused=True, replayable=True)
    assert (budget.used, budget.stale) == (0, 0)
    assert pushback.grant_retry(budget, LOST, reused=True, replayable=True)
    assert pushback.grant_retry(budget, LOST, reused=False, replayable=True)
    assert budget.used == 2
    assert not pushback.grant_retry(budget, LOST, reused=False, replayable=True)


@pytest.mark.parametrize(
    ("error", "replayable"),
    [
        (LOST_AFTER_DATA, True),  # it may have been delivered
        (refusal("550 5.1.1 no such user", EnvelopeError), True),  # a refusal is final
        (LOST, False),  # a stream that was consumed cannot be sent again
    ],
)
def test_no_retry_unless_the_failure_proves_the_message_was_not_taken(
    error: SMTPError, replayable: bool
) -> None:
    pushback, _ = policy()
    budget = RetryBudget()
    assert not pushback.grant_retry(budget, error, reused=True, replayable=replayable)
    assert (budget.used, budget.stale) == (0, 1)  # nothing spent


def test_throttling_earns_a_doubling_pause_until_a_message_is_delivered() -> None:
    pushback, _ = policy()
    throttled = refusal("451 4.7.1 slow down", EnvelopeError, command="MAIL FROM:<a@x.org>")
    assert pushback.pause_for(refusal("550 no", EnvelopeError, "RCPT TO:<b@x.org>")) is None
    assert [pushback.pause_for(throttled) for _ in range(3)] == [1.0, 2.0, 4.0]
    pushback.delivered()
    assert pushback.pause_for(throttled) == 1.0


def test_a_failed_dial_lowers_the_limit_on_a_cap_and_times_the_wait_from_the_clock() -> None:
    pushback, clock = policy(pool_timeout=30.0)
    cap = refusal("421 4.7.0 too many connections")
    assert pushback.dial_failed(cap, open_=2, dialing=0)
    assert pushback.limit.limit == 2 and pushback.last_dial_error is cap
    assert not pushback.wait_over(queued_at=90.0)  # connections are open: no outage
    # With none open, the wait for a connection counts from the outage's start.
    pushback, clock = policy(pool_timeout=30.0)
    assert not pushback.dial_failed(LOST, open_=0, dialing=0)
    assert pushback.limit.limit == 5  # not a cap: the limit stays
    clock.now = 129.0
    assert not pushback.wait_over(queued_at=90.0)
    clock.now = 130.5
    assert pushback.wait_over(queued_at=90.0)
    error = pushback.no_connection_error("mx.example", 25, waited=40.5)
    assert isinstance(error, ConnectError) and error.__cause__ is LOST
    assert "mx.example:25" in str(error) and "connection lost" in str(error)
    assert "pool_timeout (30 s; waited 40.5 s)" in str(error)


def test_without_pool_timeout_a_wait_never_ends() -> None:
    pushback, clock = policy(pool_timeout=None)
    pushback.dial_failed(LOST, open_=0, dialing=0)
    clock.now = 10**9
    assert not pushback.wait_over(queued_at=0.0)
