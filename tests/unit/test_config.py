"""Options validation and defaults; the verifying TLS context."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from smtppool import Credentials, OAuth2, Options
from smtppool.config import make_ssl_context


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
