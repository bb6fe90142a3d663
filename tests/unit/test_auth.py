"""SASL mechanisms against RFC examples, mechanism choice, and secret redaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtppool import AuthenticationError, Credentials, OAuth2
from smtppool.auth import choose_mechanism, make_mechanism


def test_cram_md5_rfc2195_example() -> None:
    mechanism = make_mechanism("CRAM-MD5", "tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() is None
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert mechanism.respond(challenge) == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_plain_rfc4616_form() -> None:
    mechanism = make_mechanism("plain", "tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() == b"\0tim\0tanstaaftanstaaf"


def test_login_answers_user_then_password_then_refuses() -> None:
    mechanism = make_mechanism("LOGIN", "user", "pw")
    assert mechanism.initial_response() is None
    assert mechanism.respond(b"Username:") == b"user"
    assert mechanism.respond(b"Password:") == b"pw"
    with pytest.raises(AuthenticationError):
        mechanism.respond(b"Again:")


def test_xoauth2_payload_and_error_answer() -> None:
    mechanism = make_mechanism("XOAUTH2", "me@x.org", "tok")
    assert mechanism.initial_response() == b"user=me@x.org\x01auth=Bearer tok\x01\x01"
    assert mechanism.respond(b'{"status":"401"}') == b""


def test_unknown_mechanism() -> None:
    with pytest.raises(ValueError, match="unknown AUTH mechanism"):
        make_mechanism("GSSAPI", "u", "p")


@pytest.mark.parametrize(
    "offered, oauth2, forced, chosen",
    [
        ({"PLAIN", "LOGIN", "CRAM-MD5"}, False, None, "CRAM-MD5"),
        ({"PLAIN", "LOGIN"}, False, None, "PLAIN"),
        ({"login"}, False, None, "LOGIN"),
        ({"PLAIN", "XOAUTH2"}, True, None, "XOAUTH2"),
        ({"PLAIN"}, False, "login", "LOGIN"),  # forced is used as given
    ],
)
def test_choose_mechanism(offered: set[str], oauth2: bool, forced: str | None, chosen: str) -> None:
    assert choose_mechanism(offered, oauth2=oauth2, forced=forced) == chosen


def test_choose_mechanism_without_overlap_says_why() -> None:
    with pytest.raises(AuthenticationError, match="offers PLAIN.*need one of XOAUTH2"):
        choose_mechanism({"PLAIN"}, oauth2=True, forced=None)
    with pytest.raises(AuthenticationError, match="offers none"):
        choose_mechanism(set(), oauth2=False, forced=None)


def test_secrets_are_not_in_reprs() -> None:
    assert "hunter2" not in repr(Credentials("bob", "hunter2"))
    token = OAuth2(
        user="me@x.org",
        access_token="ya29.secret",
        client_secret="cs",
        refresh_token="rt",
        client_id="cid",
        token_url="https://t.example/token",
    )
    assert not any(s in repr(token) for s in ("ya29.secret", "rt'", "cs'"))


def test_oauth2_needs_a_way_to_get_a_token() -> None:
    with pytest.raises(ValueError, match="access_token, or refresh_token"):
        OAuth2(user="me@x.org")
    static = OAuth2(user="me@x.org", access_token="tok")
    assert static.get_token() == "tok" and not static.can_refresh
    expired = OAuth2(user="me@x.org", access_token="tok", expires=0)
    with pytest.raises(AuthenticationError, match="cannot be refreshed"):
        expired.get_token()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Credentials("me\0admin", "pw"),
        lambda: Credentials("me", "pw\0admin"),
        lambda: OAuth2(user="me@x.org\x01auth=Bearer stolen", access_token="t"),
        lambda: OAuth2(user="me@x.org", access_token="t\x01\x01"),
        lambda: make_mechanism("XOAUTH2", "me@x.org", "token\x01from-a-server"),
    ],
    ids=["PLAIN user", "PLAIN password", "XOAUTH2 user", "XOAUTH2 token", "refreshed token"],
)
def test_credentials_with_a_field_separator_are_refused(make: Callable[[], object]) -> None:
    """A NUL re-split PLAIN's ``\\0user\\0password`` (``me\\0admin`` logs in as ``admin``
    with authorisation identity ``me``) and a ``\\x01`` added an XOAUTH2 field."""
    with pytest.raises(ValueError, match="NUL|control"):
        make()


def test_a_forced_method_must_fit_the_credentials() -> None:
    with pytest.raises(ValueError, match="XOAUTH2 needs auth=smtppool.OAuth2"):
        choose_mechanism({"XOAUTH2"}, oauth2=False, forced="xoauth2")
    with pytest.raises(ValueError, match="PLAIN needs a user and password"):
        choose_mechanism({"PLAIN"}, oauth2=True, forced="plain")


def test_a_refreshed_token_with_a_bad_expiry_is_kept_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``"expires_at": "soon"`` was stored as is, and every later get_token() raised
    TypeError comparing it with the clock."""
    from requests_oauthlib import OAuth2Session

    def refresh(self: object, url: str, **kwargs: object) -> dict[str, object]:
        return {"access_token": "fresh", "expires_at": "soon"}

    monkeypatch.setattr(OAuth2Session, "refresh_token", refresh)
    oauth = OAuth2(user="me@x.org", client_id="c", refresh_token="r", token_url="https://t/")
    assert oauth.get_token() == "fresh" and oauth.expires is None
    assert oauth.get_token() == "fresh"  # no refresh needed, no TypeError


def test_the_secret_filter_is_safe_while_refreshes_come_and_go() -> None:
    """Records were masked by iterating a dict that concurrent refreshes changed:
    ``RuntimeError: dictionary changed size during iteration`` out of a logging call."""
    import logging
    import threading

    from smtppool.oauth2 import SecretFilter

    secret_filter = SecretFilter()
    stop = threading.Event()

    def refreshes() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with secret_filter.guarding(f"secret-{n}", f"other-{n}"):
                pass

    thread = threading.Thread(target=refreshes)
    thread.start()
    try:
        for n in range(20000):
            record = logging.LogRecord("requests_oauthlib", 10, "f", 1, "body %s", (n,), None)
            assert secret_filter.filter(record)
    finally:
        stop.set()
        thread.join(5)
