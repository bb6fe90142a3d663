"""The protocol's transition table on its own, and the protocol object obeying it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool.protocol import SMTPProtocol
from smtppool.states import TRANSITIONS, State

READY_EXTENSIONS = b"250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 AUTH PLAIN\r\n"


def feed(p: SMTPProtocol, data: bytes) -> None:
    p.receive_data(data)
    while p.next_reply() is not None:
        pass


def ready() -> SMTPProtocol:
    p = SMTPProtocol()
    feed(p, b"220 hi\r\n")
    p.ehlo("client.example")
    feed(p, READY_EXTENSIONS)
    return p


def after(p: SMTPProtocol, _sent: bytes, replies: bytes) -> SMTPProtocol:
    """``p`` once the server answered what was sent (written inline, with a walrus)."""
    feed(p, replies)
    return p


#: A protocol in each state with no reply owed (DATA and GREETING always owe one).
REACH: dict[State, Callable[[], SMTPProtocol]] = {
    State.HELLO: lambda: after(SMTPProtocol(), b"", b"220 hi\r\n"),
    State.READY: ready,
    State.AUTH: lambda: after(p := ready(), p.auth("PLAIN"), b"334 \r\n"),
    State.MAIL: lambda: after(p := ready(), p.mail("a@x.org"), b"250 ok\r\n"),
    State.RCPT: lambda: after(p := ready(), p.mail("a@x.org") + p.rcpt("b@x.org"), b"250\r\n" * 2),
    State.MESSAGE: lambda: after(
        p := ready(), p.mail("a@x.org") + p.rcpt("b@x.org") + p.data(), b"250\r\n250\r\n354\r\n"
    ),
    State.BDAT: lambda: after(
        p := ready(), p.mail("a@x.org") + p.rcpt("b@x.org") + p.bdat(b"x"), b"250\r\n" * 3
    ),
    State.CLOSED: lambda: after(p := ready(), p.quit(), b"221 bye\r\n"),
}

#: Each event a client causes, by its verb in the table.
SEND: dict[str, Callable[[SMTPProtocol], bytes]] = {
    "EHLO": lambda p: p.ehlo("client.example"),
    "HELO": lambda p: p.helo("client.example"),
    "STARTTLS": lambda p: p.starttls(),
    "AUTH": lambda p: p.auth("PLAIN", b"\0u\0p"),
    "<auth response>": lambda p: p.auth_continue(b"\0u\0p"),
    "MAIL": lambda p: p.mail("a@x.org"),
    "RCPT": lambda p: p.rcpt("b@x.org"),
    "DATA": lambda p: p.data(),
    "<content>": lambda p: p.send_data(b"x"),
    ".": lambda p: p.end_data(),
    "BDAT": lambda p: p.bdat(b"x"),
    "BDAT LAST": lambda p: p.bdat(b"x", last=True),
    "RSET": lambda p: p.rset(),
    "NOOP": lambda p: p.noop(),
    "QUIT": lambda p: p.quit(),
}


def sent_from(verb: str) -> tuple[State, ...]:
    return next(step.when for step in TRANSITIONS[verb] if step.reply is None)


def test_every_state_is_reached_and_left_through_the_table() -> None:
    reached, frontier = {State.GREETING}, [State.GREETING]
    while frontier:
        state = frontier.pop()
        for steps in TRANSITIONS.values():
            for step in steps:
                if state in step.when and step.then is not None and step.then not in reached:
                    reached.add(step.then)
                    frontier.append(step.then)
    assert reached == set(State) - {State.FAILED}  # FAILED: only a broken peer leads there
    for state in reached - {State.CLOSED}:  # every state but the end has a way out
        assert any(
            state in step.when and step.then not in (None, state)
            for steps in TRANSITIONS.values()
            for step in steps
        ), state


def test_every_client_event_is_in_the_table() -> None:
    assert set(SEND) | {"LHLO", "<greeting>", "<closed>"} == set(TRANSITIONS)


@pytest.mark.parametrize("state", list(REACH), ids=lambda s: s.name)
@pytest.mark.parametrize("verb", list(SEND))
def test_the_table_decides_what_may_be_sent(state: State, verb: str) -> None:
    p = REACH[state]()
    assert p.state is state and p.pending == 0
    if state in sent_from(verb):
        SEND[verb](p)
        assert p.pending <= 1
    else:
        with pytest.raises(ValueError):
            SEND[verb](p)
        assert p.state is state and p.pending == 0  # refused before anything changed


def test_a_reply_in_a_state_the_table_does_not_list_changes_nothing() -> None:
    """A refused MAIL answered after a pipelined RSET already reset the session: the
    MAIL row's states (MAIL, RCPT) no longer hold, and READY stays READY."""
    p = ready()
    p.mail("a@x.org")
    p.rset()
    assert p.state is State.READY
    feed(p, b"550 no\r\n")
    assert p.state is State.READY
    feed(p, b"250 reset\r\n")
    assert p.state is State.READY and p.pending == 0


@pytest.mark.parametrize("state", list(REACH), ids=lambda s: s.name)
def test_the_server_closing_ends_every_state(state: State) -> None:
    p = REACH[state]()
    feed(p, b"")
    assert p.state is State.CLOSED
