"""Whatever a server sends, the protocol class ends with a parsed reply or ProtocolError:
``send_many`` loops, Django's ``fail_silently`` and the command line rely on no other
exception coming out of a session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtppool import ProtocolError
from smtppool.protocol import Reply, SMTPProtocol, decode_challenge


def ready(p: SMTPProtocol) -> SMTPProtocol:
    p.receive_data(b"220 mx\r\n")
    assert p.next_reply() is not None
    p.ehlo("client.example")
    p.receive_data(b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
    assert p.next_reply() is not None
    return p


def awaiting_greeting() -> SMTPProtocol:
    return SMTPProtocol()


def awaiting_ehlo() -> SMTPProtocol:
    p = SMTPProtocol()
    p.receive_data(b"220 mx\r\n")
    assert p.next_reply() is not None
    p.ehlo("client.example")
    return p


def awaiting_envelope() -> SMTPProtocol:
    p = ready(SMTPProtocol())
    p.mail("a@x.org")
    p.rcpt("b@x.org")
    p.data()
    return p


def awaiting_end_of_data() -> SMTPProtocol:
    p = awaiting_envelope()
    p.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    while p.next_reply() is not None:
        pass
    p.send_data(b"hi\r\n")
    p.end_data()
    return p


def awaiting_auth() -> SMTPProtocol:
    p = ready(SMTPProtocol())
    p.auth("PLAIN")
    return p


def lmtp_awaiting_end_of_data() -> SMTPProtocol:
    p = ready(SMTPProtocol(lmtp=True))
    p.mail("a@x.org")
    p.rcpt("b@x.org")
    p.rcpt("c@x.org")
    p.data()
    p.receive_data(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    while p.next_reply() is not None:
        pass
    p.end_data()
    return p


POSITIONS: list[Callable[[], SMTPProtocol]] = [
    awaiting_greeting,
    awaiting_ehlo,
    awaiting_envelope,
    awaiting_end_of_data,
    awaiting_auth,
    lmtp_awaiting_end_of_data,
]

#: Bytes a server might send: anything, or reply-shaped lines with hostile content.
reply_line = st.builds(
    lambda code, sep, text, end: code + sep + text + end,
    st.sampled_from([b"220", b"250", b"334", b"354", b"421", b"550", b"999", b"25", b"2\xff0"]),
    st.sampled_from([b" ", b"-", b"", b"_"]),
    st.binary(max_size=40),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
)
server_bytes = st.one_of(st.binary(max_size=200), st.lists(reply_line, max_size=8).map(b"".join))


def use(reply: Reply) -> None:
    """Everything a caller reads from a reply."""
    assert isinstance(reply.code, int) and 200 <= reply.code < 600
    str(reply)
    _ = reply.text, reply.enhanced, reply.is_positive, reply.is_transient, reply.is_permanent
    if reply.code == 334:
        try:
            decode_challenge(reply)
        except ProtocolError:
            pass


@pytest.mark.parametrize("position", POSITIONS, ids=lambda f: f.__name__)
@settings(max_examples=200)
@given(data=server_bytes, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_server_bytes_end_as_replies_or_a_protocol_error(
    position: Callable[[], SMTPProtocol], data: bytes, cuts: list[int]
) -> None:
    p = position()
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data), len(data)]
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            p.receive_data(data[start:end])  # the last piece is b"": the server hangs up
            while (reply := p.next_reply()) is not None:
                use(reply)
            if p.peer_closed:
                break
        size = p.extensions.size
        assert size is None or 0 < size < 10**18
        _ = p.extensions.auth_mechanisms, list(p.extensions.items()), repr(p)
    except ProtocolError:
        pass


#: EHLO keyword lines: anything without a line feed, and SIZE with hostile numbers.
ehlo_line = st.one_of(
    st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.builds(
        lambda number: b"SIZE " + number.encode("utf-8"),
        st.one_of(st.text(max_size=8), st.sampled_from(["\u00b2", "9" * 5000, "0", "-1"])),
    ),
    st.builds(lambda words: b"AUTH " + words, st.binary(max_size=20)),
)


@settings(max_examples=300)
@given(lines=st.lists(ehlo_line.filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=6))
def test_any_ehlo_lines_give_extensions_or_a_protocol_error(lines: list[bytes]) -> None:
    p = awaiting_ehlo()
    reply = b"".join(b"250-" + line + b"\r\n" for line in [b"mx", *lines]) + b"250 end\r\n"
    try:
        p.receive_data(reply)
        while (parsed := p.next_reply()) is not None:
            use(parsed)
    except ProtocolError:
        return
    size = p.extensions.size
    assert size is None or (isinstance(size, int) and 0 < size < 10**18)
    assert all(isinstance(m, str) for m in p.extensions.auth_mechanisms)
