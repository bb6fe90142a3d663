"""No caller-supplied value (address, DSN field, EHLO name, credentials) can add a
command or an ESMTP parameter on the wire: each is refused with ValueError/TypeError or
sent as one token."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from smtppool import DSN, Credentials, Envelope
from smtppool.auth import make_mechanism
from smtppool.protocol import SMTPProtocol

#: Parameters as RFC 5321 writes them: esmtp-keyword ["=" esmtp-value], no spaces.
PARAMETER = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*(=[\x21-\x3c\x3e-\x7e]+)?")

#: Text an attacker would try, mixed with anything at all.
hostile = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(
            [
                "a",
                "@",
                "x.org",
                " ",
                "NOTIFY=NEVER",
                "ORCPT=rfc822;",
                ";",
                "=",
                "<",
                ">",
                '"',
                "\\",
                "\r\n",
                "\n",
                "\r",
                "\x00",
                "RCPT TO:<v@x.org>",
                "é",
                "\u2028",
                "\u00a0",
                "\x85",
                "\u3000",
            ]
        ),  # fmt: skip
        max_size=8,
    ).map("".join),
)


def ready(*keywords: str) -> SMTPProtocol:
    """A protocol past its greeting and EHLO, offering ``keywords``."""
    p = SMTPProtocol()
    p.receive_data(b"220 mx ready\r\n")
    assert p.next_reply() is not None
    p.ehlo("client.example")
    lines = ["250-mx", *(f"250-{k}" for k in keywords[:-1]), f"250 {keywords[-1]}"]
    p.receive_data(("\r\n".join(lines) + "\r\n").encode())
    assert p.next_reply() is not None
    return p


#: A command line's words as a lax server splits them: at spaces outside quoted strings.
WORD = re.compile(rb'(?:"(?:[^"\\]|\\.)*"|[^ ])+')


def assert_one_command(wire: bytes, path: bytes, parameters: set[bytes]) -> None:
    """``wire`` is one line, ``MAIL FROM:<path>`` or ``RCPT TO:<path>`` and exactly
    ``parameters`` (by keyword), however a server splits it into words."""
    assert wire.endswith(b"\r\n") and wire.count(b"\n") == 1 and wire.count(b"\r") == 1
    assert b"\x00" not in wire
    text = wire[:-2].decode("utf-8")  # no white space but the plain space, no C1 control
    assert not any(c.isspace() and c != " " or "\x80" <= c <= "\x9f" for c in text), wire
    verb, argument, *rest = WORD.findall(wire[:-2])
    assert verb in (b"MAIL", b"RCPT") and argument in (
        b"FROM:<" + path + b">",
        b"TO:<" + path + b">",
    )
    assert all(PARAMETER.fullmatch(t) for t in rest), wire
    assert {t.split(b"=")[0] for t in rest} == parameters and len(rest) == len(parameters)


@settings(max_examples=300)
@given(sender=hostile, recipient=hostile)
@example(sender="a b@c.org NOTIFY=NEVER", recipient="d@x.org")
@example(sender="a@x.org", recipient="b@x.org\u2028NOTIFY=NEVER")  # aiosmtpd dropped the U+2028
@example(sender="a@x.org", recipient='"a\u3000b"@x.org')
def test_an_address_is_one_token_or_refused(sender: str, recipient: str) -> None:
    try:
        envelope = Envelope(sender, recipient)
    except (ValueError, TypeError):
        return
    p = ready("PIPELINING", "SMTPUTF8")
    utf8 = envelope.is_international
    encoding = "utf-8" if utf8 else "ascii"
    assert_one_command(
        p.mail(envelope.mail_from, smtputf8=utf8),
        sender.encode(encoding),
        {b"SMTPUTF8"} if utf8 else set(),
    )
    assert_one_command(p.rcpt(recipient), recipient.encode(encoding), set())


@settings(max_examples=300)
@given(envid=hostile, orcpt=hostile)
def test_dsn_values_are_encoded_or_refused(envid: str, orcpt: str) -> None:
    try:
        dsn = DSN(ret="HDRS", envid=envid, notify="SUCCESS", orcpt=orcpt)
    except (ValueError, TypeError):
        return
    p = ready("PIPELINING", "DSN")
    mail = {b"RET"} | ({b"ENVID"} if envid else set())  # an empty value is not requested
    rcpt = {b"NOTIFY"} | ({b"ORCPT"} if orcpt else set())
    assert_one_command(p.mail("a@x.org", dsn=dsn), b"a@x.org", mail)
    assert_one_command(p.rcpt("b@x.org", dsn=dsn), b"b@x.org", rcpt)


@given(name=hostile)
def test_an_ehlo_name_is_one_token_or_refused(name: str) -> None:
    p = SMTPProtocol()
    p.receive_data(b"220 mx ready\r\n")
    assert p.next_reply() is not None
    try:
        wire = p.ehlo(name)
    except ValueError:
        return
    assert wire == b"EHLO " + name.encode("ascii") + b"\r\n" and name.isprintable()
    assert " " not in name


@pytest.mark.parametrize(
    "orcpt",
    ["rfc822 NOTIFY=NEVER;b@x.org", "rfc822;b@x.org NOTIFY=NEVER", "rfc822=x;b@x.org", ";b@x.org"],
)
def test_an_orcpt_that_would_add_a_parameter(orcpt: str) -> None:
    """The address type went on the wire as given: ``ORCPT=rfc822 NOTIFY=NEVER;b@x``
    was parsed by the server as two parameters."""
    try:
        dsn = DSN(orcpt=orcpt)
    except ValueError:
        return
    p = ready("PIPELINING", "DSN")
    p.mail("a@x.org")
    wire = p.rcpt("b@x.org", dsn=dsn)
    assert_one_command(wire, b"b@x.org", {b"ORCPT"})
    assert b"NOTIFY" not in wire.replace(b"+20NOTIFY", b"")


def test_empty_dsn_values_are_not_requested_and_wrong_types_refused_alike() -> None:
    assert DSN(envid="", orcpt="").encoded_envid is DSN(orcpt="").encoded_orcpt is None
    with pytest.raises(ValueError, match="no address"):
        DSN(orcpt="rfc822;")
    for field in ("envid", "orcpt"):
        with pytest.raises(TypeError, match=f"DSN {field} must be a str"):
            DSN(**{field: 7})  # type: ignore[arg-type]


def test_orcpt_and_envid_are_xtext_and_checked() -> None:
    assert DSN(orcpt="b c@x.org").encoded_orcpt == "rfc822;b+20c@x.org"
    assert DSN(orcpt="jörg@x.org").encoded_orcpt == "utf-8;j\\x{F6}rg@x.org"
    assert DSN(orcpt="x400;a+b=c").encoded_orcpt == "x400;a+2Bb+3Dc"
    assert DSN(envid="batch 7+x").encoded_envid == "batch+207+2Bx"
    with pytest.raises(ValueError, match="address type"):
        DSN(orcpt="rfc822 NOTIFY=NEVER;b@x.org")
    with pytest.raises(ValueError, match="not ASCII"):
        DSN(orcpt="rfc822;jörg@x.org")
    with pytest.raises(ValueError, match="printable ASCII"):
        DSN(envid="é")
    with pytest.raises(ValueError, match="at most 100"):
        DSN(envid="+" * 40)  # 120 characters once encoded


def test_a_space_in_an_address_only_inside_a_quoted_local_part() -> None:
    with pytest.raises(ValueError, match="space outside a quoted local part"):
        Envelope("a b@c.org NOTIFY=NEVER", "d@x.org")
    with pytest.raises(ValueError, match="space outside a quoted local part"):
        Envelope("a@x.org", '"a b"@c.org NOTIFY=NEVER')
    with pytest.raises(ValueError, match="space outside a quoted local part"):
        Envelope("a@x.org", '"a b@c.org')  # the quote never closes
    quoted = Envelope('"john smith"@x.org', '"a\\" b"@x.org')
    p = ready("PIPELINING")
    assert p.mail(quoted.mail_from) == b'MAIL FROM:<"john smith"@x.org>\r\n'
    assert p.rcpt(quoted.rcpt_to[0]) == b'RCPT TO:<"a\\" b"@x.org>\r\n'


@given(user=hostile, password=hostile)
def test_credentials_are_one_base64_word_with_their_fields_intact(user: str, password: str) -> None:
    try:
        credentials = Credentials(user, password)
    except ValueError:
        return
    p = ready("AUTH PLAIN")
    mechanism = make_mechanism("PLAIN", credentials.user, credentials.password)
    wire = p.auth("PLAIN", mechanism.initial_response())
    verb, method, payload = wire[:-2].split(b" ")
    assert (verb, method) == (b"AUTH", b"PLAIN") and wire.count(b"\r\n") == 1
    assert base64.b64decode(payload, validate=True).split(b"\0") == [
        b"",
        user.encode(),
        password.encode(),
    ]
