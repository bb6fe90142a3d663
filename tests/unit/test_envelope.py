"""Envelope values, address checks, and smtplib-compatible derivation from headers."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from smtppool import DSN, Envelope
from smtppool.envelope import envelope_from_message


def make(**headers: str | list[str]) -> EmailMessage:
    message = EmailMessage()
    for name, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            message[name.replace("_", "-")] = item
    return message


@pytest.mark.parametrize(
    "headers, sender, recipients",
    [
        ({"From": "A <a@x.org>", "To": "b@x.org, C <c@x.org>"}, "a@x.org", ["b@x.org", "c@x.org"]),
        ({"From": "a@x.org", "Sender": "s@x.org", "To": "b@x.org"}, "s@x.org", ["b@x.org"]),
        (
            {"From": "a@x.org", "To": "b@x.org", "Cc": "c@x.org", "Bcc": "d@x.org"},
            "a@x.org",
            ["b@x.org", "d@x.org", "c@x.org"],
        ),  # smtplib's order: To, Bcc, Cc
        (
            {
                "From": "a@x.org",
                "To": "b@x.org",
                "Resent_Date": "Mon, 1 Jan 2024 00:00:00 +0000",
                "Resent_From": "r@x.org",
                "Resent_To": "rt@x.org",
                "Resent_Bcc": "rb@x.org",
            },
            "r@x.org",
            ["rt@x.org", "rb@x.org"],
        ),
    ],
)
def test_envelope_from_headers(headers: dict[str, str], sender: str, recipients: list[str]) -> None:
    envelope = envelope_from_message(make(**headers))
    assert envelope.mail_from == sender
    assert list(envelope.rcpt_to) == recipients


def test_envelope_from_headers_errors() -> None:
    with pytest.raises(ValueError, match="more than one 'Resent-'"):
        envelope_from_message(
            make(From="a@x.org", To="b@x.org", Resent_Date=["Mon, 1 Jan 2024 00:00:00 +0000"] * 2)
        )
    with pytest.raises(ValueError, match="no From"):
        envelope_from_message(make(To="b@x.org"))
    with pytest.raises(ValueError, match="no To"):
        envelope_from_message(make(From="a@x.org"))


def test_envelope_normalises_and_validates() -> None:
    assert Envelope("", "b@x.org").rcpt_to == ("b@x.org",)  # null sender allowed
    assert Envelope("a@x.org", ["b@x.org", "c@x.org"]).rcpt_to == ("b@x.org", "c@x.org")
    with pytest.raises(ValueError, match="at least one recipient"):
        Envelope("a@x.org", [])
    with pytest.raises(ValueError, match="forbidden character"):
        Envelope("a@x.org\r\nRCPT TO:<evil@x.org>", "b@x.org")
    with pytest.raises(ValueError, match="forbidden character"):
        Envelope("a@x.org", ["b@x.org", "c\x00@x.org"])
    with pytest.raises(TypeError):
        Envelope("a@x.org", [b"b@x.org"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="size"):
        Envelope("a@x.org", "b@x.org", size=-1)
    assert Envelope("jö@x.org", "b@x.org").is_international
    assert not Envelope("j@x.org", "b@x.org").is_international


def test_coerce_mapping() -> None:
    envelope = Envelope.coerce({"from": "a@x.org", "to": ["b@x.org"], "dsn": {"ret": "full"}})
    assert envelope == Envelope("a@x.org", ["b@x.org"], dsn=DSN(ret="FULL"))
    with pytest.raises(ValueError, match="'from' and 'to'"):
        Envelope.coerce({"from": "a@x.org"})
    with pytest.raises(ValueError, match="unknown keys"):
        Envelope.coerce({"from": "a@x.org", "to": "b@x.org", "cc": "c@x.org"})
    with pytest.raises(TypeError):
        Envelope.coerce("a@x.org")  # type: ignore[arg-type]


def test_dsn_validation() -> None:
    assert DSN(notify="success, delay").notify == ("SUCCESS", "DELAY")
    with pytest.raises(ValueError, match="NEVER"):
        DSN(notify=["NEVER", "SUCCESS"])
    with pytest.raises(ValueError):
        DSN(notify=["SOMETIMES"])
    with pytest.raises(ValueError):
        DSN(ret="ALL")
    with pytest.raises(ValueError):
        DSN(envid="x\r\ny")


def test_each_address_is_checked_once_on_its_way_to_the_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The envelope checks its addresses; the protocol's commands take them as they are
    (an Address carries the check), and check any other string themselves."""
    from smtppool import envelope as envelope_module
    from smtppool.envelope import Address
    from smtppool.protocol import SMTPProtocol

    checked: list[object] = []
    check = envelope_module._check_characters

    def counted(address: object, what: str) -> str:
        checked.append(address)
        return check(address, what)

    monkeypatch.setattr(envelope_module, "_check_characters", counted)
    env = Envelope("a@x.org", ["b@x.org", "c@bücher.example"])
    # The A-label form of the third is a new address, checked as it is made.
    assert checked == ["a@x.org", "b@x.org", "c@bücher.example", "c@xn--bcher-kva.example"]
    assert all(type(a) is Address for a in (env.mail_from, *env.rcpt_to, *env.ascii_rcpt_to))
    assert env.ascii_rcpt_to[1] == "c@xn--bcher-kva.example"
    p = SMTPProtocol()
    p.receive_data(b"220 hi\r\n")
    p.next_reply()
    p.ehlo("client.example")
    p.receive_data(b"250-mx\r\n250 PIPELINING\r\n")
    p.next_reply()
    p.mail(env.mail_from)
    for recipient in env.ascii_rcpt_to:
        p.rcpt(recipient)
    assert len(checked) == 4  # nothing checked twice
    p.rcpt("d@x.org")  # a plain string is checked by the command itself
    assert checked[-1] == "d@x.org"
    with pytest.raises(ValueError):
        p.rcpt("e@x.org> NOTIFY=NEVER")
    with pytest.raises(ValueError):  # an Address cannot be made unchecked
        p.rcpt(Address("e@x.org> NOTIFY=NEVER"))
