"""The pytest plugin, used the way a user would: in their own test file, by fixture name."""

from __future__ import annotations

import pytest

#: A user's own mail code, which their tests (and the README's example) exercise.
USER_CODE = """
from email.message import EmailMessage

import smtppool


def send_welcome(address, transport):
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = address
    message["Subject"] = "Welcome"
    message.set_content("Thanks for signing up.")
    transport.send(message)
"""

USER_TESTS = (
    USER_CODE
    + """


def test_welcome_mail(smtp_sink):
    with smtppool.SMTPPool.from_url(smtp_sink.url) as transport:
        send_welcome("ann@example.org", transport)
    [sent] = smtp_sink.messages
    assert sent.envelope.mail_from == "app@example.com"
    assert sent.envelope.rcpt_to == ("ann@example.org",)
    assert sent["Subject"] == "Welcome"
    assert sent.message.get_content() == "Thanks for signing up.\\n"


def test_refusals_and_clear(smtp_sink_factory):
    sink = smtp_sink_factory(reject_recipients=["ghost@example.org"])
    with smtppool.SMTPPool.from_url(sink.url) as transport:
        result = transport.send(
            b"From: a@example.com\\r\\nTo: b@example.org, ghost@example.org\\r\\n\\r\\nhi\\r\\n")
    assert result.rejected == ["ghost@example.org"]
    assert [m.envelope.rcpt_to for m in sink.messages] == [("b@example.org",)]
    sink.clear()
    assert sink.messages == []


def test_a_fresh_sink_per_test(smtp_sink):
    assert smtp_sink.messages == []
"""
)


def test_plugin_fixture_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_mail=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # entry point loads it
    result.assert_outcomes(passed=3)
