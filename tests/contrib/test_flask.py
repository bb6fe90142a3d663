"""The Flask extension with a real app against a real aiosmtpd server."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from smtppool.contrib.flask import Mail  # noqa: E402
from smtppool.sink import Sink  # noqa: E402

SinkFactory = Callable[..., Sink]


def make_app(sink: Sink | None = None, **config: Any) -> Any:
    app = flask.Flask("test_app")
    if sink is not None:
        app.config.update(MAIL_SERVER=sink.host, MAIL_PORT=sink.port)
    app.config.update(MAIL_DEFAULT_SENDER=("App", "app@x.org"), **config)
    return app


def message(to: str, subject: str = "Hi") -> EmailMessage:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello from Flask")
    return msg


def test_send_from_a_view(smtpd: SinkFactory) -> None:
    sink = smtpd()
    app = make_app(sink, SMTPPOOL_MAX_CONNECTIONS=2)
    mail = Mail(app)

    @app.post("/signup")
    def signup() -> str:
        result = mail.send(message(flask.request.form["email"], "Welcome"))
        assert result is not None
        return result.response

    try:
        client = app.test_client()
        for i in range(5):
            response = client.post("/signup", data={"email": f"u{i}@x.org"})
            assert response.status_code == 200 and response.text.startswith("250 ")
        with app.app_context():
            assert mail.pool.options.max_connections == 2
            assert mail.pool is mail.pool  # one pool per app
    finally:
        mail.close()
    assert [m.rcpt_tos for m in sink.messages] == [(f"u{i}@x.org",) for i in range(5)]
    assert all(m.mail_from == "app@x.org" for m in sink.messages)
    assert b"From: App <app@x.org>" in sink.messages[0].data
    assert sink.connections_opened == 1  # a warm connection served every request
    for received in sink.messages:  # added, as Flask-Mail does; exactly once
        headers = received.data.split(b"\r\n\r\n")[0]
        assert headers.count(b"\r\nDate: ") == headers.count(b"\r\nMessage-ID: <") == 1
    assert len({m.data.split(b"Message-ID: ")[1][:40] for m in sink.messages}) == 5


def test_init_app_factory_pattern_and_separate_pools(smtpd: SinkFactory) -> None:
    first, second = smtpd(), smtpd()
    mail = Mail()
    apps = [make_app(first), make_app(second)]
    for app in apps:
        mail.init_app(app)
    try:
        for app in apps:
            with app.app_context():
                mail.send(message("a@x.org"))
        with apps[0].app_context():
            pool_one = mail.pool
        with apps[1].app_context():
            assert mail.pool is not pool_one
    finally:
        for app in apps:
            with app.app_context():
                mail.close()
    assert len(first.messages) == len(second.messages) == 1


@pytest.mark.parametrize("config", [{"MAIL_SUPPRESS_SEND": True}, {"TESTING": True}])
def test_suppressed_sending_records_to_the_outbox(
    smtpd: SinkFactory, config: dict[str, Any]
) -> None:
    sink = smtpd()
    app = make_app(sink, **config)
    mail = Mail(app)
    with app.app_context(), mail.record_messages() as recorded:
        assert mail.send(message("a@x.org", "Test")) is None
        assert [m["Subject"] for m in mail.outbox] == ["Test"]
        assert recorded == mail.outbox
        assert mail.state.pool is None  # nothing was dialled
    assert sink.messages == [] and sink.connections_opened == 0


def test_config_keys_are_mapped(smtpd: SinkFactory, client_tls: dict[str, Any]) -> None:
    sink = smtpd(tls="starttls", credentials={"u": "pw"})
    app = make_app(
        sink,
        MAIL_SERVER="localhost",
        MAIL_USE_TLS=True,
        MAIL_USERNAME="u",
        MAIL_PASSWORD="pw",
        MAIL_MAX_EMAILS=2,
        SMTPPOOL_TLS=client_tls,
    )
    mail = Mail(app)
    try:
        with app.app_context():
            options = mail.pool.options
            assert options.require_tls and options.max_messages == 2
            for i in range(3):
                mail.send(message(f"u{i}@x.org"))
    finally:
        mail.close()
    assert [m.login for m in sink.messages] == ["u"] * 3
    assert [m.connection for m in sink.messages] == [1, 1, 2]  # MAIL_MAX_EMAILS per connection


def test_smtppool_url_and_missing_sender(smtpd: SinkFactory) -> None:
    sink = smtpd()
    app = flask.Flask("url_app")
    app.config["SMTPPOOL_URL"] = f"smtp://127.0.0.1:{sink.port}/?max_messages=5"
    mail = Mail(app)
    try:
        with app.app_context():
            assert mail.pool.options.max_messages == 5
            with pytest.raises(ValueError, match="MAIL_DEFAULT_SENDER"):
                mail.send(message("a@x.org"))
            explicit = message("a@x.org")
            explicit["From"] = "me@x.org"
            mail.send(explicit)
    finally:
        mail.close()
    assert sink.messages[0].mail_from == "me@x.org"
