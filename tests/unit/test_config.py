"""Options validation and defaults; the verifying TLS context."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

import pytest

from smtppool import Credentials, OAuth2, Options
from smtppool.config import lookup_service, make_ssl_context, parse_url


def test_defaults_and_port_rules() -> None:
    assert Options().port == 25
    assert Options(secure=True).port == 465
    assert Options(port=587).port == 587
    assert Options(auth=("u", "p")).auth == Credentials("u", "p")


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"host": "bad host"}, ValueError, "host"),
        ({"host": "mx\r\n.example"}, ValueError, "host"),
        ({"port": 0}, ValueError, "at least 1"),
        ({"port": 70000}, ValueError, "65535"),
        ({"port": "25"}, TypeError, "port"),
        ({"name": "a b"}, ValueError, "EHLO"),
        ({"ignore_tls": True, "require_tls": True}, ValueError, "conflicts"),
        ({"require_tls": True, "opportunistic_tls": True}, ValueError, "conflicts"),
        ({"socket_timeout": 0}, ValueError, "positive"),
        ({"greeting_timeout": float("inf")}, ValueError, "positive"),
        ({"connection_timeout": "10"}, TypeError, "seconds"),
        ({"max_connections": 0}, ValueError, "at least 1"),
        ({"max_messages": True}, TypeError, "int"),
        ({"retries": -1}, ValueError, "at least 0"),
        ({"auth": "user:pw"}, TypeError, "auth"),
        ({"auth_method": "NTLM"}, ValueError, "unknown auth_method"),
        ({"auth": ("u", "p"), "auth_method": "XOAUTH2"}, ValueError, "OAuth2"),
        ({"tls": {"verify_hostname": False}}, ValueError, "unknown tls option"),
        ({"tls": "yes"}, TypeError, "tls"),
        ({"on_idle": 3}, TypeError, "callable"),
    ],
)
def test_validation(options: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Options(**options)


def test_options_are_hashable_and_redacted() -> None:
    a = Options(host="mx.example", auth=("u", "hunter2"), tls={"cafile": None, "verify": True})
    b = Options(host="mx.example", auth=("u", "hunter2"), tls={"verify": True, "cafile": None})
    assert a == b and hash(a) == hash(b)
    assert "hunter2" not in repr(a)
    token = OAuth2(user="me@x.org", access_token="secret-token")
    assert "secret-token" not in repr(Options(auth=token, auth_method="xoauth2"))


def test_replace_validates() -> None:
    options = Options(host="mx.example")
    assert options.replace(port=2525).port == 2525
    with pytest.raises(ValueError):
        options.replace(port=-1)


def test_tls_context_verifies_by_default_and_applies_overrides() -> None:
    default = make_ssl_context(None)
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert make_ssl_context(None) is default  # cached
    relaxed = make_ssl_context(Options(tls={"verify": False}).tls)
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
    pinned = make_ssl_context(Options(tls={"minimum_version": "TLSv1.3"}).tls)
    assert pinned.minimum_version == ssl.TLSVersion.TLSv1_3
    own = ssl.create_default_context()
    assert make_ssl_context(Options(tls=own).tls) is own
    assert Options(host="10.0.0.1", tls={"server_hostname": "mx.example"}).server_hostname == (
        "mx.example"
    )
    with pytest.raises(ValueError, match="TLS version"):
        make_ssl_context(Options(tls={"minimum_version": "SSLv2"}).tls)


# -- URLs and services ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("smtp://mx.example.com", {"host": "mx.example.com", "secure": False}),
        (
            "smtps://u%40x.org:p%3Aw%2Fd@smtp.example.com:2465",
            {
                "host": "smtp.example.com",
                "port": 2465,
                "secure": True,
                "auth": ("u@x.org", "p:w/d"),
            },
        ),
        (
            "smtp://[::1]:2525/?max_connections=3&rate_limit=10&rate_delta=0.5&require_tls=yes",
            {
                "host": "::1",
                "port": 2525,
                "secure": False,
                "max_connections": 3,
                "rate_limit": 10,
                "rate_delta": 0.5,
                "require_tls": True,
            },
        ),
        (
            "smtp://h/?maxConnections=2&socketTimeout=5000&rateDelta=2000&ignoreTLS=true&pool=true",
            {
                "host": "h",
                "secure": False,
                "max_connections": 2,
                "socket_timeout": 5.0,
                "rate_delta": 2.0,
                "ignore_tls": True,
            },
        ),
        (
            "smtp://h/?tls.rejectUnauthorized=false&tls.servername=mx.example&tls.cafile=/ca.pem",
            {
                "host": "h",
                "secure": False,
                "tls": {"verify": False, "server_hostname": "mx.example", "cafile": "/ca.pem"},
            },
        ),
        (
            "smtp://h/?pool_timeout=none&rate_limit=None&connection_ttl=60",
            {
                "host": "h",
                "secure": False,
                "pool_timeout": None,
                "rate_limit": None,
                "connection_ttl": 60.0,
            },
        ),
        ("lmtp://127.0.0.1:24", {"host": "127.0.0.1", "port": 24, "lmtp": True, "secure": False}),
        ("smtp://h/?service=gmail", {"host": "h", "secure": False, "service": "gmail"}),
    ],
)
def test_parse_url(url: str, expected: dict[str, Any]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url, match",
    [
        ("http://mx.example.com", "unsupported URL scheme"),
        ("smtp://h:99999", "invalid port"),
        ("smtp://h:port", "invalid port"),
        ("smtp://h/?max_conections=3", "unknown URL option 'max_conections'"),
        ("smtp://h/?max_connections=many", "not a valid int"),
        ("smtp://h/?secure=perhaps", "not a valid bool"),
        ("smtp://h/?logger=x", "unknown URL option"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_url(url)


def test_bad_url_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_url("smtp://user:hunter2@h:bad")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "name, host",
    [
        ("gmail", "smtp.gmail.com"),
        ("GMail", "smtp.gmail.com"),
        ("Google Mail", "smtp.gmail.com"),
        ("someone@googlemail.com", "smtp.gmail.com"),
        ("Office 365", "smtp.office365.com"),
        ("hotmail", "smtp-mail.outlook.com"),
        ("yahoo", "smtp.mail.yahoo.com"),
        ("iCloud", "smtp.mail.me.com"),
        ("zoho", "smtp.zoho.com"),
        ("FastMail", "smtp.fastmail.com"),
        ("SES", "email-smtp.us-east-1.amazonaws.com"),
        ("ses-eu-west-1", "email-smtp.eu-west-1.amazonaws.com"),
        ("SendGrid", "smtp.sendgrid.net"),
        ("mailgun", "smtp.mailgun.org"),
        ("postmark", "smtp.postmarkapp.com"),
        ("Brevo", "smtp-relay.brevo.com"),
        ("sendinblue", "smtp-relay.brevo.com"),
        ("Mailjet", "in-v3.mailjet.com"),
        ("mailtrap", "live.smtp.mailtrap.io"),
    ],
)
def test_services(name: str, host: str) -> None:
    assert lookup_service(name)["host"] == host


def test_unknown_service() -> None:
    with pytest.raises(ValueError, match="unknown service 'nosuchmail'"):
        lookup_service("nosuchmail")


def test_every_service_entry_is_a_valid_options_subset() -> None:
    import json
    from importlib.resources import files

    data = json.loads((files("smtppool") / "services.json").read_text())
    fields = {f.name for f in dataclasses.fields(Options)}
    for name, entry in data.items():
        settings = {k: v for k, v in entry.items() if k not in ("aliases", "domains")}
        assert set(settings) <= fields, name
        assert isinstance(entry["port"], int) and isinstance(entry["host"], str), name
        Options(**settings)  # validates


def test_precedence_service_then_url_then_keywords() -> None:
    options = Options.from_settings(service="gmail")
    assert (options.host, options.port, options.secure) == ("smtp.gmail.com", 465, True)
    options = Options.from_settings(service="gmail", url="smtps://u:p@relay.example:2465")
    assert (options.host, options.port) == ("relay.example", 2465)
    options = Options.from_settings(
        service="gmail", url="smtps://relay.example", port=8465, max_connections=9
    )
    assert (options.host, options.port, options.max_connections) == ("relay.example", 8465, 9)
    options = Options.from_settings(url="smtp://h/?service=sendgrid")
    assert options.host == "h" and options.port == 587 and options.require_tls
    with pytest.raises(TypeError, match="unknown option"):
        Options.from_settings(hostname="x")
