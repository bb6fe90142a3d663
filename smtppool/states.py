"""The SMTP client's states, and every change of state in one table.

:data:`TRANSITIONS` says, for each event (a command sent, or a reply to it), in which
states it may happen and where it leads; :class:`~smtppool.protocol.SMTPProtocol`
applies it in one method, refuses a command the table does not allow in the current
state, and lets a reply that arrives in a state the table does not list change nothing.
Plain values, tested on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "GROUP_ENDERS",
    "ON_REPLY",
    "ON_SEND",
    "TRANSITIONS",
    "ReplySteps",
    "State",
    "Transition",
]


class State(enum.Enum):
    """Where the client stands in the SMTP dialogue."""

    GREETING = "GREETING"  #: waiting for the server's greeting
    HELLO = "HELLO"  #: EHLO/LHLO/HELO needed (new connection, or just after STARTTLS)
    READY = "READY"  #: between transactions
    AUTH = "AUTH"  #: inside an AUTH exchange
    MAIL = "MAIL"  #: MAIL sent
    RCPT = "RCPT"  #: at least one RCPT sent
    DATA = "DATA"  #: DATA sent, waiting for 354
    MESSAGE = "MESSAGE"  #: 354 received: content may be sent, then the end of data
    BDAT = "BDAT"  #: BDAT chunks under way, LAST not yet sent
    CLOSED = "CLOSED"  #: QUIT sent, 421 received, or the server closed the connection
    FAILED = "FAILED"  #: a protocol error happened; the object refuses further use


# Short names to write the table with.
_GREETING, _HELLO, _READY, _AUTH = State.GREETING, State.HELLO, State.READY, State.AUTH
_MAIL, _RCPT, _DATA, _MESSAGE = State.MAIL, State.RCPT, State.DATA, State.MESSAGE
_BDAT, _CLOSED, _FAILED = State.BDAT, State.CLOSED, State.FAILED
_ALIVE = (_GREETING, _HELLO, _READY, _AUTH, _MAIL, _RCPT, _DATA, _MESSAGE, _BDAT)


def _positive(code: int) -> bool:
    return 200 <= code < 300


def _not_positive(code: int) -> bool:
    return not 200 <= code < 300


def _is_220(code: int) -> bool:
    return code == 220


def _is_354(code: int) -> bool:
    return code == 354


def _not_334(code: int) -> bool:
    return code != 334


def _any(code: int) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state: on ``reply`` (a test of the reply code; None when the command
    itself is sent), in one of the states ``when``, go to ``then`` (None: stay) and
    apply ``effect`` (what else the event means for the session; see ``_advance``)."""

    reply: Callable[[int], bool] | None
    when: tuple[State, ...]
    then: State | None
    effect: str = ""


def _sent(when: tuple[State, ...], then: State | None = None) -> Transition:
    return Transition(None, when, then)


#: Every state change, by the event's verb: sending a command (a reply test of None;
#: a command whose state is not listed is refused with ValueError), then the replies
#: to it in order of preference (a reply in a state not listed changes nothing: the
#: session moved on, say by a pipelined RSET).  "<greeting>" is the server's opening,
#: "." the end of the message data, "<content>" a piece of it, "<closed>" the session
#: ending (a 421, or the server hanging up).  Tuples, not sets: membership by identity
#: skips hashing the Enum in Python code.
TRANSITIONS: dict[str, tuple[Transition, ...]] = {
    "<greeting>": (Transition(_positive, (_GREETING,), _HELLO),),
    "EHLO": (
        _sent((_HELLO, _READY)),
        Transition(_positive, (_HELLO, _READY), _READY, "extensions"),
    ),
    "LHLO": (
        _sent((_HELLO, _READY)),
        Transition(_positive, (_HELLO, _READY), _READY, "extensions"),
    ),
    "HELO": (
        _sent((_HELLO, _READY)),
        Transition(_positive, (_HELLO, _READY), _READY, "no extensions"),
    ),
    "STARTTLS": (_sent((_READY,)), Transition(_is_220, (_READY,), _HELLO, "tls")),
    "AUTH": (_sent((_READY,), _AUTH), Transition(_not_334, (_AUTH,), _READY, "login")),
    "<auth response>": (_sent((_AUTH,)),),
    "MAIL": (_sent((_READY,), _MAIL), Transition(_not_positive, (_MAIL, _RCPT), _READY)),
    "RCPT": (_sent((_MAIL, _RCPT), _RCPT),),
    "DATA": (
        _sent((_RCPT,), _DATA),
        Transition(_is_354, (_DATA,), _MESSAGE, "message"),
        Transition(_any, (_DATA,), _READY),
    ),
    "<content>": (_sent((_MESSAGE,)),),
    ".": (_sent((_MESSAGE,), _READY),),
    "BDAT": (_sent((_RCPT, _BDAT), _BDAT),),
    "BDAT LAST": (_sent((_RCPT, _BDAT), _READY),),
    "RSET": (_sent((_READY, _MAIL, _RCPT, _BDAT), _READY),),
    "NOOP": (_sent((_HELLO, _READY, _MAIL, _RCPT)),),
    "QUIT": (_sent((_GREETING, _HELLO, _READY, _AUTH, _MAIL, _RCPT, _BDAT), _CLOSED),),
    "<closed>": (_sent(_ALIVE, _CLOSED),),
}
#: The table indexed for the per-message path, derived from it and never edited: for
#: each verb the client sends, the states it may be sent in and the state it leads to
#: (None: stays); for each verb, its reply transitions as (test, when, then, effect).
ON_SEND: dict[str, tuple[tuple[State, ...], State | None]] = {
    verb: (step.when, step.then)
    for verb, steps in TRANSITIONS.items()
    for step in steps
    if step.reply is None
}
#: A verb's reply transitions as (test, when, then, effect), in order of preference.
ReplySteps = tuple[tuple[Callable[[int], bool], tuple[State, ...], State | None, str], ...]
ON_REPLY: dict[str, ReplySteps] = {
    verb: tuple((s.reply, s.when, s.then, s.effect) for s in steps if s.reply is not None)
    for verb, steps in TRANSITIONS.items()
    if any(s.reply is not None for s in steps)
}

#: Commands after which nothing may be pipelined until their reply is in (RFC 2920 §3.1).
GROUP_ENDERS = frozenset(
    {"<greeting>", "EHLO", "LHLO", "HELO", "STARTTLS", "AUTH", "QUIT", "NOOP", "DATA"}
)
