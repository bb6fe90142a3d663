"""login() against aiosmtpd: each mechanism, failures, plaintext refusal, OAuth2 refresh."""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import threading
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from smtppool import AuthenticationError, Envelope, OAuth2, SMTPConnection
from smtppool.cli import main
from smtppool.sink import Sink

SinkFactory = Callable[..., Sink]
USERS = {"alice@x.org": "correct horse"}


@pytest.mark.parametrize("method", [None, "PLAIN", "LOGIN", "CRAM-MD5"])
def test_password_mechanisms(
    smtpd: SinkFactory, client_tls: dict[str, Any], method: str | None
) -> None:
    sink = smtpd(tls="starttls", credentials=USERS)
    with SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=client_tls,
        auth=("alice@x.org", "correct horse"),
        auth_method=method,
    ) as conn:
        conn.send(Envelope("alice@x.org", "b@x.org"), b"authenticated\r\n")
    assert sink.login_attempts == [(method or "CRAM-MD5", "alice@x.org", True)]
    assert sink.messages[0].login == "alice@x.org"


def test_login_is_separate_from_connect(smtpd: SinkFactory, client_tls: dict[str, Any]) -> None:
    sink = smtpd(tls="starttls", credentials=USERS)
    conn = SMTPConnection(host="localhost", port=sink.port, tls=client_tls)
    conn.connect()
    conn.login()  # no auth configured: counts as authenticated, sends nothing
    assert sink.login_attempts == []
    conn.login(("alice@x.org", "correct horse"))
    conn.quit()
    assert sink.login_attempts == [("CRAM-MD5", "alice@x.org", True)]


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_wrong_password(smtpd: SinkFactory, client_tls: dict[str, Any], method: str) -> None:
    sink = smtpd(tls="starttls", credentials=USERS)
    conn = SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=client_tls,
        auth=("alice@x.org", "wrong"),
        auth_method=method,
    )
    conn.connect()
    with pytest.raises(AuthenticationError, match=f"AUTH {method} failed") as info:
        conn.login()
    assert info.value.response_code == 535 and not info.value.temporary
    assert "wrong" not in str(info.value) and "wrong" not in repr(info.value)
    assert info.value.command is not None and "****" in info.value.command
    assert len(sink.login_attempts) == 1  # never silently retried with another method
    conn.quit()


def test_no_auth_offered_before_tls(smtpd: SinkFactory) -> None:
    sink = smtpd(tls="starttls", credentials=USERS)
    conn = SMTPConnection(
        host="127.0.0.1", port=sink.port, ignore_tls=True, auth=("alice@x.org", "correct horse")
    )
    conn.connect()
    with pytest.raises(
        AuthenticationError,
        match=r"AUTH extension not supported by server. \(Some servers offer it only after",
    ):
        conn.login()
    conn.close()


def test_plaintext_auth_to_loopback_is_allowed(smtpd: SinkFactory) -> None:
    sink = smtpd(credentials=USERS, auth_require_tls=False)
    with SMTPConnection(host="127.0.0.1", port=sink.port, auth=("alice@x.org", "correct horse")):
        pass
    assert sink.login_attempts == [("CRAM-MD5", "alice@x.org", True)]


@pytest.mark.parametrize("allow", [False, True])
def test_plaintext_auth_to_a_remote_peer(allow: bool) -> None:
    """A socketpair peer is not loopback TCP: credentials leave only with the opt-in."""
    client_end, server_end = socket.socketpair()
    received = bytearray()

    def server() -> None:
        server_end.settimeout(5)
        server_end.sendall(b"220 remote.example\r\n")
        received.extend(server_end.recv(1024))  # EHLO
        server_end.sendall(b"250-remote.example\r\n250 AUTH PLAIN LOGIN\r\n")
        try:
            while data := server_end.recv(1024):
                received.extend(data)
                if data.startswith(b"AUTH"):
                    server_end.sendall(b"235 2.7.0 ok\r\n")
        except OSError:
            pass

    thread = threading.Thread(target=server)
    thread.start()
    conn = SMTPConnection(
        host="mail.example.com",
        sock=client_end,
        auth=("u", "secret"),
        auth_method="PLAIN",
        allow_plaintext_auth=allow,
    )
    conn.connect()
    if allow:
        conn.login()
    else:
        with pytest.raises(AuthenticationError, match="unencrypted"):
            conn.login()
    conn.close()
    thread.join(10)
    server_end.close()
    assert (b"AUTH PLAIN AHUAc2VjcmV0" in received) is allow


# -- OAuth2 --------------------------------------------------------------------------------


class TokenEndpoint:
    """A local HTTPS OAuth2 token endpoint that issues numbered tokens."""

    def __init__(self, ca: trustme.CA) -> None:
        self.requests: list[dict[str, str]] = []
        self.issued = 0
        self.token_prefix = "token"
        self.refresh_token = "refresh-2"
        self.status = 200  # else an invalid_grant error
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers["Content-Length"])
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                endpoint.requests.append(form)
                endpoint.issued += 1
                issued = {
                    "access_token": f"{endpoint.token_prefix}-{endpoint.issued}",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": endpoint.refresh_token,
                }
                refused = {"error": "invalid_grant", "error_description": "refresh token revoked"}
                body = json.dumps(issued if endpoint.status == 200 else refused).encode()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def token_endpoint(
    ca: trustme.CA, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TokenEndpoint]:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    endpoint = TokenEndpoint(ca)
    yield endpoint
    endpoint.close()


def oauth_sink(smtpd: SinkFactory, token: str) -> Sink:
    return smtpd(tls="starttls", tokens={"me@x.org": token})


def revoked_token(endpoint: TokenEndpoint) -> OAuth2:
    """Credentials whose access token the server refuses, refreshable at ``endpoint``."""
    return OAuth2(
        user="me@x.org",
        client_id="cid",
        refresh_token="r",
        access_token="revoked",
        token_url=endpoint.url,
    )


def test_static_access_token(smtpd: SinkFactory, client_tls: dict[str, Any]) -> None:
    sink = oauth_sink(smtpd, "static")
    with SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=client_tls,
        auth=OAuth2(user="me@x.org", access_token="static"),
    ):
        pass
    assert sink.login_attempts == [("XOAUTH2", "me@x.org", True)]


def test_xoauth2_credentials_can_come_at_login(
    smtpd: SinkFactory, client_tls: dict[str, Any]
) -> None:
    """``auth_method="XOAUTH2"`` without ``auth=`` raised at construction, though
    ``login(auth=OAuth2(...))`` is the documented way to give credentials later; the
    method is checked against the credentials once they are known."""
    sink = oauth_sink(smtpd, "static")
    conn = SMTPConnection(host="localhost", port=sink.port, tls=client_tls, auth_method="XOAUTH2")
    with conn:
        with pytest.raises(ValueError, match="XOAUTH2 needs auth=smtppool.OAuth2"):
            conn.login(auth=("me@x.org", "password"))
        conn.login(auth=OAuth2(user="me@x.org", access_token="static"))
    assert sink.login_attempts == [("XOAUTH2", "me@x.org", True)]


def test_expired_token_is_refreshed_and_stored(
    smtpd: SinkFactory, client_tls: dict[str, Any], token_endpoint: TokenEndpoint
) -> None:
    sink = oauth_sink(smtpd, "token-1")
    stored: list[dict[str, Any]] = []
    auth = OAuth2(
        user="me@x.org",
        client_id="cid",
        client_secret="csecret",
        refresh_token="refresh-1",
        access_token="old",
        expires=1.0,
        token_url=token_endpoint.url,
        on_token=stored.append,
    )
    with SMTPConnection(host="localhost", port=sink.port, tls=client_tls, auth=auth):
        pass
    assert [r["grant_type"] for r in token_endpoint.requests] == ["refresh_token"]
    assert token_endpoint.requests[0]["refresh_token"] == "refresh-1"
    assert token_endpoint.requests[0]["client_id"] == "cid"
    assert [t["access_token"] for t in stored] == ["token-1"]
    assert sink.login_attempts == [("XOAUTH2", "me@x.org", True)]  # the stale one never sent


def test_rejected_token_is_refreshed_and_retried_exactly_once(
    smtpd: SinkFactory, client_tls: dict[str, Any], token_endpoint: TokenEndpoint
) -> None:
    sink = oauth_sink(smtpd, "token-1")
    auth = revoked_token(token_endpoint)
    with SMTPConnection(host="localhost", port=sink.port, tls=client_tls, auth=auth):
        pass
    assert sink.login_attempts == [("XOAUTH2", "me@x.org", False), ("XOAUTH2", "me@x.org", True)]
    assert token_endpoint.issued == 1


def test_token_rejected_twice_raises(
    smtpd: SinkFactory, client_tls: dict[str, Any], token_endpoint: TokenEndpoint
) -> None:
    sink = oauth_sink(smtpd, "never-issued")
    auth = revoked_token(token_endpoint)
    conn = SMTPConnection(host="localhost", port=sink.port, tls=client_tls, auth=auth)
    conn.connect()
    with pytest.raises(AuthenticationError, match="AUTH XOAUTH2 failed") as info:
        conn.login()
    assert info.value.response_code == 535
    assert len(sink.login_attempts) == 2 and token_endpoint.issued == 1
    conn.close()


def test_credentials_never_reach_the_logs(
    smtpd: SinkFactory, client_tls: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtppool")
    sink = smtpd(tls="starttls", credentials=USERS, tokens={"me@x.org": "tok-SECRET"})
    for method in ("PLAIN", "LOGIN", "CRAM-MD5"):
        with SMTPConnection(
            host="localhost",
            port=sink.port,
            tls=client_tls,
            debug=True,
            auth=("alice@x.org", "correct horse"),
            auth_method=method,
        ) as conn:
            conn.send(Envelope("alice@x.org", "b@x.org"), b"body text\r\n")
    with SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=client_tls,
        transaction_log=True,
        auth=OAuth2(user="me@x.org", access_token="tok-SECRET"),
    ):
        pass
    bad = SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=client_tls,
        transaction_log=True,
        auth=("alice@x.org", "wrong horse"),
        auth_method="PLAIN",
    )
    bad.connect()
    with pytest.raises(AuthenticationError) as info:
        bad.login()
    bad.close()
    text = caplog.text + str(info.value) + repr(info.value) + repr(bad)
    assert "AUTH PLAIN ****" in caplog.text and "body text" in caplog.text  # logging works
    for secret in ("correct horse", "wrong horse", "tok-SECRET"):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode()[:12] not in text
    assert base64.b64encode(b"\0alice@x.org\0correct horse").decode() not in text


def encrypted_client_key(ca: trustme.CA, directory: Path, passphrase: str) -> dict[str, str]:
    """A client certificate whose key file is encrypted with ``passphrase``."""
    cert = ca.issue_cert("client.example")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )
    (directory / "client.key").write_bytes(encrypted)
    cert.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    return {"certfile": str(directory / "client.pem"), "keyfile": str(directory / "client.key")}


def test_no_secret_reaches_a_log_record_an_error_or_a_repr(
    smtpd: SinkFactory,
    ca: trustme.CA,
    client_tls: dict[str, Any],
    token_endpoint: TokenEndpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every secret set to a marker, the root logger at DEBUG (requests-oauthlib logs
    request bodies and the tokens it obtains there), sessions with a password, a TLS key
    passphrase and a refreshed OAuth2 token, a failed refresh, and the command line:
    the marker is in no record, exception, repr or output."""
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    token_endpoint.token_prefix, token_endpoint.refresh_token = "new-MARKER", "refresh-MARKER-2"
    tls = {
        **client_tls,
        **encrypted_client_key(ca, tmp_path, "keypass-MARKER"),
        "password": "keypass-MARKER",
    }
    sink = smtpd(
        tls="starttls",
        credentials={"alice@x.org": "password-MARKER"},
        tokens={"me@x.org": "new-MARKER-1"},
    )
    texts: list[str] = []
    with SMTPConnection(
        host="localhost",
        port=sink.port,
        tls=tls,
        debug=True,
        transaction_log=True,
        auth=("alice@x.org", "password-MARKER"),
    ) as conn:
        conn.send(Envelope("alice@x.org", "b@x.org"), b"body text\r\n")
        texts += [repr(conn), repr(conn.options)]
    oauth = OAuth2(
        user="me@x.org",
        client_id="cid",
        client_secret="client-secret-MARKER",
        refresh_token="refresh-MARKER-1",
        access_token="old-MARKER",
        token_url=token_endpoint.url,
    )
    with SMTPConnection(
        host="localhost", port=sink.port, tls=client_tls, transaction_log=True, auth=oauth
    ) as conn:
        texts += [repr(conn), repr(conn.options), repr(oauth)]
    assert sink.login_attempts[-2:] == [
        ("XOAUTH2", "me@x.org", False),
        ("XOAUTH2", "me@x.org", True),
    ]
    assert token_endpoint.requests[0]["client_secret"] == "client-secret-MARKER"  # it was sent
    token_endpoint.status = 400
    with pytest.raises(AuthenticationError) as info:
        oauth.refresh()
    assert info.value.__cause__ is info.value.__context__ is None  # the request stays out
    texts += ["".join(traceback.format_exception(info.value)), repr(info.value)]
    url = f"smtp://alice%40x.org:password-MARKER@127.0.0.1:{sink.port}/"
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert main(["verify", "--url", url, "--cafile", str(tmp_path / "ca.pem")]) == 0
    output = capsys.readouterr()
    texts += [output.out, output.err]
    records = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any("refresh token request body" in r for r in records)  # the library did log
    assert any("AUTH CRAM-MD5" in r for r in records) and "STARTTLS" in output.out
    leaks = [t for t in [*texts, *records, caplog.text] if "MARKER" in t]
    assert not leaks, leaks[:3]
