"""The Django backend through Django's public mail API, against a real aiosmtpd server.

Runs on whichever Django is installed: 5.2 (configured with ``EMAIL_*`` settings) or
6.1+ (configured with ``MAILERS``).
"""

from __future__ import annotations

import collections
import email
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

MAILERS = django.VERSION >= (6, 1)
BACKEND = "smtppool.contrib.django.EmailBackend"

if not settings.configured:
    settings.configure(
        DEFAULT_FROM_EMAIL="app@x.org",
        SERVER_EMAIL="server@x.org",
        ADMINS=["admin@x.org"] if MAILERS else [("Admin", "admin@x.org")],
        **(
            {"MAILERS": {"default": {"BACKEND": BACKEND, "OPTIONS": {"host": "localhost"}}}}
            if MAILERS
            else {"EMAIL_BACKEND": BACKEND}
        ),
    )
    django.setup()

from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from smtppool import ConnectError, SMTPError  # noqa: E402
from smtppool.contrib.django import EmailBackend, close_pools  # noqa: E402
from smtppool.sink import Sink  # noqa: E402

SinkFactory = Callable[..., Sink]


@contextmanager
def mail_settings(**options: Any) -> Iterator[None]:
    """Point Django at a server the way each Django version expects to be configured."""
    if MAILERS:
        host = {"host": options.pop("host", "127.0.0.1")}
        config = {"BACKEND": BACKEND, "OPTIONS": {**host, **options}}
        quiet = {**config, "OPTIONS": {**config["OPTIONS"], "fail_silently": True}}
        with override_settings(MAILERS={"default": config, "bulk": config, "quiet": quiet}):
            yield
    else:
        names = {
            "host": "EMAIL_HOST",
            "port": "EMAIL_PORT",
            "username": "EMAIL_HOST_USER",
            "password": "EMAIL_HOST_PASSWORD",
            "use_tls": "EMAIL_USE_TLS",
            "use_ssl": "EMAIL_USE_SSL",
            "timeout": "EMAIL_TIMEOUT",
        }
        django_options = {names[k]: v for k, v in options.items() if k in names}
        pool_options = {k: v for k, v in options.items() if k not in names}
        django_options.setdefault("EMAIL_HOST", "127.0.0.1")
        with override_settings(EMAIL_BACKEND=BACKEND, SMTPPOOL=pool_options, **django_options):
            yield


def backend() -> Any:
    """A new backend instance, the way each Django version hands them out."""
    return mail.mailers["default"] if MAILERS else mail.get_connection()


def send_quietly(*args: Any) -> int:
    """``send_mail`` with failures silenced (6.1 moved fail_silently into OPTIONS)."""
    if MAILERS:
        return int(mail.send_mail(*args, using="quiet"))
    return int(mail.send_mail(*args, fail_silently=True))


@pytest.fixture(autouse=True)
def fresh_pools(smtpd: SinkFactory) -> Iterator[None]:
    """Close the shared pools after each test, before its servers stop."""
    yield
    close_pools()


def test_send_mail_and_email_message(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port):
        assert mail.send_mail("Hi", "Body text", "app@x.org", ["a@x.org", "B <b@x.org>"]) == 1
        message = mail.EmailMessage("Sub", "Text", "app@x.org", ["c@x.org"], bcc=["hidden@x.org"])
        assert message.send() == 1
    first, second = sink.messages
    assert first.mail_from == "app@x.org" and first.rcpt_tos == ("a@x.org", "b@x.org")
    assert b"Body text" in first.data
    assert second.rcpt_tos == ("c@x.org", "hidden@x.org") and b"hidden" not in second.data


def test_send_mass_mail_shares_a_few_connections(smtpd: SinkFactory) -> None:
    sink = smtpd()
    datatuple = [(f"Subject {i}", f"Body {i}", "app@x.org", [f"u{i}@x.org"]) for i in range(200)]
    # max_messages above the batch: a connection retired after 100 would rightly be
    # replaced by a fourth, which is not what this test is about.
    with mail_settings(port=sink.port, max_connections=3, max_messages=1000, parallel=True):
        assert mail.send_mass_mail(datatuple) == 200
    assert len(sink.messages) == 200
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(f"u{i}@x.org" for i in range(200))
    assert sink.max_concurrent <= 3
    assert len(collections.Counter(m.connection for m in sink.messages)) <= 3


def test_one_call_delivers_in_order_by_default(smtpd: SinkFactory) -> None:
    sink = smtpd()
    messages = [mail.EmailMessage(f"S{i}", "B", "app@x.org", [f"u{i}@x.org"]) for i in range(30)]
    with mail_settings(port=sink.port, max_connections=4):
        assert backend().send_messages(messages) == 30
    assert [m.rcpt_tos[0] for m in sink.messages] == [f"u{i}@x.org" for i in range(30)]


def test_backends_with_the_same_settings_share_one_pool(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port):
        for i in range(5):  # Django builds a new backend for every send_mail()
            mail.send_mail(f"Hi {i}", "Body", "app@x.org", ["a@x.org"])
        first, second = backend(), backend()
        assert first is not second
        with first, second:
            assert first.connection is second.connection
    assert len(sink.messages) == 5 and {m.connection for m in sink.messages} == {2}
    assert sink.connections_opened == 2  # the settings check when the pool was created, and one


def test_mail_admins(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port):
        mail.mail_admins("Server on fire", "Details")
    [received] = sink.messages
    assert received.mail_from == "server@x.org" and received.rcpt_tos == ("admin@x.org",)
    assert b"Server on fire" in received.data


def test_attachments_alternatives_and_non_ascii(smtpd: SinkFactory) -> None:
    sink = smtpd()
    message = mail.EmailMultiAlternatives(
        "Grüße", "Plain text body", "Jörg <app@x.org>", ["user@exämple.org"]
    )
    message.attach_alternative("<p>HTML body</p>", "text/html")
    message.attach("report.csv", "a,b\n1,2\n", "text/csv")
    message.attach("blob.bin", bytes(range(256)), "application/octet-stream")
    with mail_settings(port=sink.port):
        assert message.send() == 1
    [received] = sink.messages
    assert received.rcpt_tos == ("user@xn--exmple-cua.org",)  # IDNA, as Django does
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße"
    parts = {part.get_content_type(): part for part in parsed.walk()}
    assert "HTML body" in parts["text/html"].get_content()
    assert parts["application/octet-stream"].get_content() == bytes(range(256))
    assert parts["text/csv"].get_filename() == "report.csv"


def test_fail_silently_on_a_dead_server() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        with mail_settings(port=unused.getsockname()[1], retries=0):
            assert send_quietly("Hi", "Body", "app@x.org", ["a@x.org"]) == 0
            with pytest.raises(ConnectError) as info:
                mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"])
    import smtplib

    assert isinstance(info.value, smtplib.SMTPException)  # Django code catching this still works


def test_refused_recipients_raise_unless_fail_silently(smtpd: SinkFactory) -> None:
    sink = smtpd(reject_recipients=["nobody@x.org"])
    with mail_settings(port=sink.port):
        with pytest.raises(SMTPError, match="every recipient was refused"):
            mail.send_mail("Hi", "Body", "app@x.org", ["nobody@x.org"])
        assert send_quietly("Hi", "Body", "app@x.org", ["nobody@x.org"]) == 0
        assert mail.send_mail("Hi", "Body", "app@x.org", ["nobody@x.org", "ok@x.org"]) == 1
    assert [m.rcpt_tos for m in sink.messages] == [("ok@x.org",)]


@pytest.mark.parametrize("mode", ["use_tls", "use_ssl"])
def test_tls_settings_are_mapped(smtpd: SinkFactory, client_tls: dict[str, Any], mode: str) -> None:
    sink = smtpd(tls="starttls" if mode == "use_tls" else "implicit", credentials={"u": "pw"})
    with mail_settings(
        host="localhost",
        port=sink.port,
        username="u",
        password="pw",
        tls=client_tls,
        **{mode: True},
    ):
        options = backend().options
        assert (options.secure, options.require_tls) == (mode == "use_ssl", mode == "use_tls")
        assert mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"]) == 1
    assert sink.messages[0].login == "u"


def test_use_tls_fails_against_a_server_without_starttls(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port, use_tls=True):
        with pytest.raises(SMTPError, match="STARTTLS"):
            mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"])


def test_without_use_tls_a_failed_starttls_is_not_a_plaintext_send(
    smtpd: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """STARTTLS is used when offered; a handshake failing on an untrusted certificate
    was redialled in plaintext and the message went out without a word.  Now the plaintext
    retry happens only with an explicit opportunistic_tls, logged with its reason every
    time and counted in stats()."""
    sink = smtpd(tls="starttls")  # a certificate from a CA this process does not trust
    with mail_settings(port=sink.port, timeout=5):
        with pytest.raises(SMTPError, match="certificate verify failed.*opportunistic_tls=True"):
            mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"])
    assert sink.messages == []
    with mail_settings(port=sink.port, timeout=5, opportunistic_tls=True):
        for _ in range(2):
            assert mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"])
        shared = backend()  # the process-wide pool these settings share
        shared.open()
        stats = shared.connection.stats()
        shared.close()
    assert len(sink.messages) == 2 and stats["tls_fallbacks"] >= 1
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert warnings and all("certificate verify failed" in w for w in warnings), warnings
    assert len(warnings) == stats["tls_fallbacks"]  # verify()'s connection counted too


def test_timeout_and_pool_options_reach_the_pool(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port, timeout=7, max_connections=2, rate_limit=50, pool_timeout=5):
        options = backend().options
    assert (options.socket_timeout, options.greeting_timeout) == (7, 7)
    assert (options.max_connections, options.rate_limit, options.pool_timeout) == (2, 50, 5)
    assert not options.opportunistic_tls and not options.require_tls  # STARTTLS if offered
    with mail_settings(port=sink.port, timeout=7):
        assert backend().options.pool_timeout == 7  # a dead server fails within the timeout


def test_unknown_pool_option_is_an_error() -> None:
    with override_settings(SMTPPOOL={"max_conections": 2}):
        with pytest.raises(ValueError, match="max_conections"):
            EmailBackend(host="127.0.0.1", alias="default") if MAILERS else EmailBackend()


@pytest.mark.skipif(not MAILERS, reason="MAILERS and using= arrived in Django 6.1")
def test_mailers_using(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with mail_settings(port=sink.port):
        assert mail.send_mail("Hi", "Body", "app@x.org", ["a@x.org"], using="bulk") == 1
        assert isinstance(mail.mailers["bulk"], EmailBackend)
    assert len(sink.messages) == 1
