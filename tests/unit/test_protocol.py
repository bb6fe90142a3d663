"""SMTPProtocol from byte scripts: no sockets, every script fed whole and byte by byte."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from smtppool import DSN, ProtocolError
from smtppool.protocol import Extensions, Reply, SMTPProtocol, State, decode_challenge, xtext

# A script step is ("C", action, expected_bytes) or ("S", server_bytes, expected_codes).
Script = list[tuple[Any, ...]]

GREETING: Script = [("S", b"220 mx.example ESMTP ready\r\n", [220])]


def ehlo(*keywords: str) -> Script:
    lines = ["250-mx.example greets you", *(f"250-{k}" for k in keywords)]
    lines[-1] = "250 " + lines[-1][4:]
    reply = ("\r\n".join(lines) + "\r\n").encode()
    return GREETING + [
        ("C", lambda p: p.ehlo("client.example"), b"EHLO client.example\r\n"),
        ("S", reply, [250]),
    ]


def feed(p: SMTPProtocol, data: bytes, bytewise: bool) -> list[Reply]:
    replies = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        p.receive_data(piece)
        while (reply := p.next_reply()) is not None:
            replies.append(reply)
    return replies


def play(script: Script, *, bytewise: bool, lmtp: bool = False) -> tuple[SMTPProtocol, list[Reply]]:
    p = SMTPProtocol(lmtp=lmtp)
    seen: list[Reply] = []
    for step in script:
        if step[0] == "C":
            _, action, expected = step
            assert action(p) == expected
        else:
            _, data, codes = step
            replies = feed(p, data, bytewise)
            assert [r.code for r in replies] == codes
            seen += replies
    return p, seen


both = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


@both
def test_greeting_and_ehlo_parse_extensions(bytewise: bool) -> None:
    script = ehlo(
        "SIZE 35882577",
        "8BITMIME",
        "  PIPELINING",
        "AUTH PLAIN LOGIN",
        "AUTH=CRAM-MD5",
        "ENHANCEDSTATUSCODES",
        "dsn",
        "SMTPUTF8",
        "CHUNKING",
    )
    p, replies = play(script, bytewise=bytewise)
    assert p.state is State.READY
    ext = p.extensions
    assert ext.size == 35882577
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN", "CRAM-MD5"}
    for keyword in ("PIPELINING", "8bitmime", "DSN", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"):
        assert keyword in ext
    assert replies[1].lines[0] == "mx.example greets you"
    assert replies[1].command == "EHLO client.example"


def test_size_without_limit_and_zero_mean_no_limit() -> None:
    assert Extensions.parse(["SIZE"]).size is None
    assert Extensions.parse(["SIZE 0"]).size is None
    assert "SIZE" in Extensions.parse(["SIZE 0"])


@both
def test_multiline_reply_and_enhanced_codes(bytewise: bool) -> None:
    script = ehlo("ENHANCEDSTATUSCODES") + [
        ("C", lambda p: p.mail("a@x.org"), b"MAIL FROM:<a@x.org>\r\n"),
        ("S", b"550-5.7.1 Policy says no\r\n550-5.7.1 see the docs\r\n550 5.7.1 really\r\n", [550]),
    ]
    _, replies = play(script, bytewise=bytewise)
    reply = replies[-1]
    assert reply.lines == ("5.7.1 Policy says no", "5.7.1 see the docs", "5.7.1 really")
    assert reply.enhanced == (5, 7, 1)
    assert reply.is_permanent and not reply.is_transient and not reply.is_positive
    assert str(reply) == "550 5.7.1 Policy says no 5.7.1 see the docs 5.7.1 really"
    assert reply.command == "MAIL FROM:<a@x.org>"


def test_reply_without_text_and_bare_lf_line_endings() -> None:
    p, replies = play([("S", b"220\n", [220])], bytewise=False)
    assert replies[0].lines == ("",)
    assert p.state is State.HELLO


def test_ehlo_refused_then_helo_fallback() -> None:
    script = GREETING + [
        ("C", lambda p: p.ehlo("c.example"), b"EHLO c.example\r\n"),
        ("S", b"502 5.5.2 command not recognized\r\n", [502]),
        ("C", lambda p: p.helo("c.example"), b"HELO c.example\r\n"),
        ("S", b"250 mx.example\r\n", [250]),
    ]
    p, _ = play(script, bytewise=False)
    assert p.state is State.READY
    assert len(p.extensions) == 0


def test_mail_and_rcpt_parameters_only_when_advertised() -> None:
    dsn = DSN(ret="hdrs", envid="id+1=x", notify=["success", "failure"], orcpt="o@x.org")
    p, _ = play(ehlo("SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN", "PIPELINING"), bytewise=False)
    assert p.mail("a@x.org", size=10, eight_bit=True, smtputf8=False, dsn=dsn) == (
        b"MAIL FROM:<a@x.org> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=id+2B1+3Dx\r\n"
    )
    assert p.rcpt("b@x.org", dsn=dsn) == (
        b"RCPT TO:<b@x.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;o@x.org\r\n"
    )
    bare, _ = play(ehlo("HELP"), bytewise=False)
    assert bare.mail("a@x.org", size=10, eight_bit=True, dsn=dsn) == b"MAIL FROM:<a@x.org>\r\n"


def test_smtputf8_needs_the_extension_and_encodes_utf8() -> None:
    p, _ = play(ehlo("SMTPUTF8", "PIPELINING"), bytewise=False)
    assert p.mail("jöran@x.org", smtputf8=True) == "MAIL FROM:<jöran@x.org> SMTPUTF8\r\n".encode()
    assert p.rcpt("ü@x.org") == "RCPT TO:<ü@x.org>\r\n".encode()
    plain, _ = play(ehlo("PIPELINING"), bytewise=False)
    with pytest.raises(ValueError, match="SMTPUTF8"):
        plain.mail("jöran@x.org", smtputf8=True)
    with pytest.raises(ValueError, match="needs SMTPUTF8"):
        plain.mail("jöran@x.org")
    assert plain.state is State.READY and plain.pending == 0


@pytest.mark.parametrize(
    "address",
    [
        "a@x.org\r\nRSET",
        "a@x.org\n",
        "a\x00@x.org",
        "a@x.org> X",
        "<a@x.org",
        " a@x.org",
        "a\x7f@x.org",
    ],
)
def test_injection_in_addresses_is_refused_before_any_bytes(address: str) -> None:
    p, _ = play(ehlo("PIPELINING"), bytewise=False)
    with pytest.raises(ValueError):
        p.mail(address)
    with pytest.raises(ValueError):
        p.mail("ok@x.org") and p.rcpt(address)
    assert p.pending == 1  # only the valid MAIL is outstanding


def test_invalid_ehlo_name() -> None:
    p, _ = play(GREETING, bytewise=False)
    for name in ("a b", "a\r\nMAIL", ""):
        with pytest.raises(ValueError):
            p.ehlo(name)


def test_xtext() -> None:
    assert xtext("a+b=c d\x01é") == "a+2Bb+3Dc+20d+01+C3+A9"


@both
def test_pipelined_group_replies_are_tagged(bytewise: bool) -> None:
    script = ehlo("PIPELINING") + [
        (
            "C",
            lambda p: p.mail("a@x.org") + p.rcpt("b@x.org") + p.rcpt("c@x.org") + p.data(),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n",
        ),
        ("S", b"250 ok\r\n250 ok\r\n550 no such user\r\n354 go ahead\r\n", [250, 250, 550, 354]),
        ("C", lambda p: p.send_data(b"Hi\n.\n") + p.end_data(), b"Hi\r\n..\r\n.\r\n"),
        ("S", b"250 queued\r\n", [250]),
    ]
    p, replies = play(script, bytewise=bytewise)
    assert [r.command for r in replies[2:]] == [
        "MAIL FROM:<a@x.org>",
        "RCPT TO:<b@x.org>",
        "RCPT TO:<c@x.org>",
        "DATA",
        "<end of data>",
    ]
    assert p.state is State.READY and p.pending == 0


def test_pipelining_needs_the_extension() -> None:
    p, _ = play(ehlo("SIZE 100"), bytewise=False)
    p.mail("a@x.org")
    with pytest.raises(ValueError, match="PIPELINING"):
        p.rcpt("b@x.org")


@pytest.mark.parametrize(
    "ender, follow",
    [
        (lambda p: p.mail("a@x.org") and p.rcpt("b@x.org") and p.data(), lambda p: p.rset()),
        (lambda p: p.noop(), lambda p: p.mail("a@x.org")),
        (lambda p: p.ehlo("again.example"), lambda p: p.mail("a@x.org")),
        (lambda p: p.auth("PLAIN", b"\0u\0p"), lambda p: p.quit()),
    ],
)
def test_group_enders_cannot_be_followed(
    ender: Callable[[SMTPProtocol], bytes], follow: Callable[[SMTPProtocol], bytes]
) -> None:
    p, _ = play(ehlo("PIPELINING"), bytewise=False)
    ender(p)
    with pytest.raises(ValueError):
        follow(p)


def test_next_transaction_may_follow_end_of_data_when_pipelining() -> None:
    script = ehlo("PIPELINING") + [
        (
            "C",
            lambda p: p.mail("a@x.org") + p.rcpt("b@x.org") + p.data(),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n",
        ),
        ("S", b"250 ok\r\n250 ok\r\n354 go\r\n", [250, 250, 354]),
        ("C", lambda p: p.end_data() + p.mail("n@x.org"), b".\r\nMAIL FROM:<n@x.org>\r\n"),
        ("S", b"250 queued\r\n250 ok\r\n", [250, 250]),
    ]
    p, replies = play(script, bytewise=False)
    assert replies[-2].command == "<end of data>" and p.state is State.MAIL


@pytest.mark.parametrize(
    "action",
    [
        lambda p: p.rcpt("b@x.org"),
        lambda p: p.data(),
        lambda p: p.send_data(b"x"),
        lambda p: p.end_data(),
        lambda p: p.auth_continue(b"x"),
    ],
)
def test_commands_out_of_order_are_refused(action: Callable[[SMTPProtocol], bytes]) -> None:
    p, _ = play(ehlo("PIPELINING"), bytewise=False)
    with pytest.raises(ValueError):
        action(p)
    assert p.state is State.READY and p.pending == 0


def test_nothing_before_greeting_and_ehlo() -> None:
    p = SMTPProtocol()
    with pytest.raises(ValueError):
        p.ehlo("c.example")
    p, _ = play(GREETING, bytewise=False)
    with pytest.raises(ValueError):
        p.mail("a@x.org")


def test_data_refused_returns_to_ready_and_mail_refused_too() -> None:
    script = ehlo("PIPELINING") + [
        (
            "C",
            lambda p: p.mail("a@x.org") + p.rcpt("b@x.org") + p.data(),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n",
        ),
        ("S", b"550 sender refused\r\n503 need MAIL\r\n503 need RCPT\r\n", [550, 503, 503]),
    ]
    p, _ = play(script, bytewise=False)
    assert p.state is State.READY
    assert p.mail("a@x.org") == b"MAIL FROM:<a@x.org>\r\n"


def test_dot_stuffing_and_line_endings_in_data() -> None:
    script = ehlo() + [
        ("C", lambda p: p.mail("a@x.org"), b"MAIL FROM:<a@x.org>\r\n"),
        ("S", b"250 ok\r\n", [250]),
        ("C", lambda p: p.rcpt("b@x.org"), b"RCPT TO:<b@x.org>\r\n"),
        ("S", b"250 ok\r\n", [250]),
        ("C", lambda p: p.data(), b"DATA\r\n"),
        ("S", b"354 go\r\n", [354]),
        ("C", lambda p: p.send_data(b".a\n.\r.\r\n"), b"..a\r\n..\r\n..\r\n"),
        ("C", lambda p: p.send_data(b"end") + p.end_data(), b"end\r\n.\r\n"),
        ("S", b"250 queued\r\n", [250]),
    ]
    p, _ = play(script, bytewise=False)
    assert p.state is State.READY


@both
def test_bdat_chunks_without_dot_stuffing(bytewise: bool) -> None:
    script = ehlo("CHUNKING", "PIPELINING") + [
        (
            "C",
            lambda p: p.mail("a@x.org") + p.rcpt("b@x.org"),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n",
        ),
        ("S", b"250 ok\r\n250 ok\r\n", [250, 250]),
        ("C", lambda p: p.bdat(b".x\n"), b"BDAT 4\r\n.x\r\n"),
        ("S", b"250 4 octets\r\n", [250]),
        ("C", lambda p: p.bdat(b".y", last=True), b"BDAT 4 LAST\r\n.y\r\n"),
        ("S", b"250 queued\r\n", [250]),
    ]
    p, replies = play(script, bytewise=bytewise)
    assert replies[-1].command == "BDAT 4 LAST"
    assert p.state is State.READY


def test_bdat_needs_chunking() -> None:
    p, _ = play(ehlo("PIPELINING"), bytewise=False)
    p.mail("a@x.org")
    p.rcpt("b@x.org")
    with pytest.raises(ValueError, match="CHUNKING"):
        p.bdat(b"x", last=True)


@both
def test_lmtp_one_reply_per_accepted_recipient(bytewise: bool) -> None:
    script: Script = [
        ("S", b"220 lmtp ready\r\n", [220]),
        ("C", lambda p: p.ehlo("c.example"), b"LHLO c.example\r\n"),
        ("S", b"250-lmtp\r\n250 PIPELINING\r\n", [250]),
        (
            "C",
            lambda p: (
                p.mail("a@x.org")
                + p.rcpt("b@x.org")
                + p.rcpt("c@x.org")
                + p.rcpt("d@x.org")
                + p.data()
            ),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\n"
            b"RCPT TO:<d@x.org>\r\nDATA\r\n",
        ),
        (
            "S",
            b"250 ok\r\n250 ok\r\n550 unknown\r\n250 ok\r\n354 go\r\n",
            [250, 250, 550, 250, 354],
        ),
        ("C", lambda p: p.end_data(), b".\r\n"),
        ("S", b"250 2.0.0 b ok\r\n452 4.2.2 d over quota\r\n", [250, 452]),
    ]
    p, _ = play(script, bytewise=bytewise, lmtp=True)
    assert p.pending == 0 and p.state is State.READY
    with pytest.raises(ValueError, match="LMTP"):
        p.helo("c.example")


def test_lmtp_pipelined_bdat_last_expands_at_reply_time() -> None:
    script: Script = [
        ("S", b"220 lmtp\r\n", [220]),
        ("C", lambda p: p.ehlo("c.example"), b"LHLO c.example\r\n"),
        ("S", b"250-lmtp\r\n250-CHUNKING\r\n250 PIPELINING\r\n", [250]),
        (
            "C",
            lambda p: (
                p.mail("a@x.org") + p.rcpt("b@x.org") + p.rcpt("c@x.org") + p.bdat(b"hi", last=True)
            ),
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\n"
            b"BDAT 4 LAST\r\nhi\r\n",
        ),
        ("S", b"250 ok\r\n250 ok\r\n250 ok\r\n250 b\r\n250 c\r\n", [250] * 5),
    ]
    p, _ = play(script, bytewise=False, lmtp=True)
    assert p.pending == 0


def test_auth_is_redacted_and_challenge_decoded() -> None:
    script = ehlo("AUTH PLAIN LOGIN") + [
        ("C", lambda p: p.auth("login"), b"AUTH LOGIN\r\n"),
        ("S", b"334 VXNlcm5hbWU6\r\n", [334]),
        ("C", lambda p: p.auth_continue(b"user"), b"dXNlcg==\r\n"),
        ("S", b"334 UGFzc3dvcmQ6\r\n", [334]),
        ("C", lambda p: p.auth_continue(b"secret"), b"c2VjcmV0\r\n"),
        ("S", b"235 2.7.0 ok\r\n", [235]),
        ("C", lambda p: p.auth("PLAIN", b"\0u\0pw"), b"AUTH PLAIN AHUAcHc=\r\n"),
        ("S", b"503 already authenticated\r\n", [503]),
    ]
    p, replies = play(script, bytewise=False)
    assert decode_challenge(replies[2]) == b"Username:"
    assert [r.command for r in replies[2:]] == ["AUTH LOGIN", "****", "****", "AUTH PLAIN ****"]
    assert p.authenticated is False and p.state is State.READY  # the last attempt failed
    with pytest.raises(ProtocolError):
        decode_challenge(Reply(334, ("not base64!",), "AUTH X"))


def test_starttls_clears_extensions_and_requires_ehlo() -> None:
    script = ehlo("STARTTLS", "AUTH PLAIN") + [
        ("C", lambda p: p.starttls(), b"STARTTLS\r\n"),
        ("S", b"220 go ahead\r\n", [220]),
    ]
    p, _ = play(script, bytewise=False)
    assert p.state is State.HELLO and len(p.extensions) == 0
    with pytest.raises(ValueError):
        p.mail("a@x.org")


def test_starttls_response_injection_is_a_protocol_error() -> None:
    p, _ = play(ehlo("STARTTLS"), bytewise=False)
    p.starttls()
    p.receive_data(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    with pytest.raises(ProtocolError, match="injection"):
        p.next_reply()
    assert p.state is State.FAILED


def test_unsolicited_421_closes_and_is_returned() -> None:
    p, _ = play(ehlo("PIPELINING"), bytewise=False)
    p.receive_data(b"421 4.4.2 idle timeout\r\n")
    reply = p.next_reply()
    assert reply is not None and reply.code == 421 and reply.command is None
    assert p.state is State.CLOSED
    with pytest.raises(ValueError):
        p.mail("a@x.org")


def test_421_to_a_command_closes() -> None:
    p, _ = play(ehlo(), bytewise=False)
    p.mail("a@x.org")
    assert feed(p, b"421 shutting down\r\n", False)[0].command == "MAIL FROM:<a@x.org>"
    assert p.state is State.CLOSED


def test_eof_closes_and_later_data_is_an_error() -> None:
    p, _ = play(ehlo(), bytewise=False)
    p.receive_data(b"")
    assert p.peer_closed and p.state is State.CLOSED and p.next_reply() is None
    with pytest.raises(ProtocolError, match="after end of stream"):
        p.receive_data(b"250 ok\r\n")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"abc hello\r\n", "malformed"),
        (b"25 short\r\n", "malformed"),
        (b"099 too low\r\n", "malformed"),
        (b"600 too high\r\n", "malformed"),
        (b"220_bad separator\r\n", "malformed"),
        (b"220-one\r\n250 two\r\n", "mixes codes"),
        (b"220 " + b"x" * 9000 + b"\r\n", "longer than"),
        (b"220 " + b"x" * 9000, "longer than"),
        (b"220-x\r\n" * 1001 + b"220 x\r\n", "more than 1000 lines"),
    ],
)
def test_malformed_replies_fail_the_protocol(data: bytes, message: str) -> None:
    p = SMTPProtocol()
    with pytest.raises(ProtocolError, match=message):
        feed(p, data, False)
    assert p.state is State.FAILED
    with pytest.raises(ProtocolError):
        p.next_reply()
    with pytest.raises(ProtocolError):
        p.receive_data(b"220 ok\r\n")


def test_reply_with_nothing_pending_is_an_error() -> None:
    p, _ = play(ehlo(), bytewise=False)
    with pytest.raises(ProtocolError, match="no command pending"):
        feed(p, b"250 surprise\r\n", False)


def test_rset_returns_to_ready_and_quit_closes() -> None:
    script = ehlo() + [
        ("C", lambda p: p.mail("a@x.org"), b"MAIL FROM:<a@x.org>\r\n"),
        ("S", b"250 ok\r\n", [250]),
        ("C", lambda p: p.rset(), b"RSET\r\n"),
        ("S", b"250 reset\r\n", [250]),
        ("C", lambda p: p.noop(), b"NOOP\r\n"),
        ("S", b"250 ok\r\n", [250]),
        ("C", lambda p: p.quit(), b"QUIT\r\n"),
        ("S", b"221 bye\r\n", [221]),
    ]
    p, _ = play(script, bytewise=False)
    assert p.state is State.CLOSED


def test_unsolicited_data_is_never_paired_with_the_next_command() -> None:
    p = SMTPProtocol()
    feed(p, b"220 hi\r\n", False)
    p.ehlo("c.example")
    p.receive_data(b"250 hello\r\n250 extra reply\r\n")
    assert p.next_reply() is not None  # the EHLO reply; the extra one waits in the buffer
    with pytest.raises(ProtocolError, match="unsolicited"):
        p.mail("a@x.org")
    assert p.state is State.FAILED


def test_a_pending_421_notice_does_not_count_as_unsolicited_garbage() -> None:
    p, _ = play(ehlo(), bytewise=False)
    p.receive_data(b"421 4.4.2 closing")  # not yet complete
    p.mail("a@x.org")
    assert feed(p, b"\r\n", False)[0].code == 421 and p.state is State.CLOSED
