"""TLS against aiosmtpd with trustme certificates: STARTTLS, implicit TLS, policies."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from smtppool import Envelope, SMTPConnection, TLSError
from smtppool.sink import Sink

SinkFactory = Callable[..., Sink]


def send_one(sink: Sink, **options: Any) -> SMTPConnection:
    with SMTPConnection(host="localhost", port=sink.port, **options) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), b"over tls\r\n")
    return conn


def test_starttls_upgrades_by_default_and_forgets_plaintext_extensions(
    smtpd: SinkFactory, client_tls: dict[str, Any]
) -> None:
    sink = smtpd(tls="starttls", credentials={"u": "p"})
    with SMTPConnection(host="localhost", port=sink.port, tls=client_tls) as conn:
        assert conn.secure and conn.tls_mode == "STARTTLS"
        assert "STARTTLS" not in conn.extensions  # the post-TLS EHLO is what counts
        assert "AUTH" in conn.extensions  # aiosmtpd only offers AUTH after TLS
        conn.send(Envelope("a@x.org", "b@x.org"), b"hi\r\n")
    assert len(sink.messages) == 1


def test_implicit_tls(smtpd: SinkFactory, client_tls: dict[str, Any]) -> None:
    sink = smtpd(tls="implicit")
    conn = send_one(sink, secure=True, tls=client_tls)
    assert conn.tls_mode == "implicit" and len(sink.messages) == 1


def test_ssl_context_object_accepted(smtpd: SinkFactory, ca: trustme.CA) -> None:
    sink = smtpd(tls="implicit")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    send_one(sink, secure=True, tls=context)
    assert len(sink.messages) == 1


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_untrusted_certificate_fails(smtpd: SinkFactory, mode: str) -> None:
    sink = smtpd(tls=mode)
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED") as info:
        send_one(sink, secure=mode == "implicit")
    assert info.value.code == "ETLS" and isinstance(info.value, ssl.SSLError)
    assert sink.messages == []


def test_hostname_mismatch_fails(smtpd: SinkFactory, client_tls: dict[str, Any]) -> None:
    sink = smtpd(tls="implicit")
    with pytest.raises(TLSError, match="mismatch|doesn't match|not valid"):
        send_one(sink, secure=True, tls={**client_tls, "server_hostname": "mx.example"})


def test_verification_can_be_turned_off_explicitly(smtpd: SinkFactory) -> None:
    sink = smtpd(tls="starttls")
    assert send_one(sink, tls={"verify": False}).tls_mode == "STARTTLS"


def test_require_tls_without_starttls_fails(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with pytest.raises(TLSError, match="STARTTLS extension not supported by server"):
        send_one(sink, require_tls=True)
    assert sink.messages == []


def test_ignore_tls_stays_plaintext(smtpd: SinkFactory) -> None:
    sink = smtpd(tls="starttls")
    conn = send_one(sink, ignore_tls=True)
    assert not conn.secure and len(sink.messages) == 1


def test_opportunistic_tls_falls_back_to_plaintext_on_handshake_failure(
    smtpd: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = smtpd(tls="starttls")  # certificate not trusted by the default context
    conn = send_one(sink, opportunistic_tls=True)
    assert not conn.secure and len(sink.messages) == 1
    assert sink.connections_opened == 2  # the failed handshake, then a clean plaintext session
    assert "continuing WITHOUT TLS (opportunistic_tls): the TLS handshake failed" in caplog.text
    assert conn.tls_fallback is not None and "certificate verify failed" in conn.tls_fallback


def test_default_policy_does_not_fall_back(smtpd: SinkFactory) -> None:
    sink = smtpd(tls="starttls")
    with pytest.raises(TLSError):
        send_one(sink)
    assert sink.messages == [] and sink.connections_opened == 1


def test_minimum_version_is_applied(
    smtpd: SinkFactory, client_tls: dict[str, Any], server_tls_context: ssl.SSLContext
) -> None:
    sink = smtpd(tls="implicit")
    with SMTPConnection(
        host="localhost",
        port=sink.port,
        secure=True,
        tls={**client_tls, "minimum_version": "TLSv1_3"},
    ) as conn:
        assert conn._transport.sock is not None and isinstance(conn._transport.sock, ssl.SSLSocket)
        assert conn._transport.sock.version() == "TLSv1.3"


def test_given_socket_is_upgraded_to_tls_when_secure(
    smtpd: SinkFactory, client_tls: dict[str, Any]
) -> None:
    import socket

    sink = smtpd(tls="implicit")
    sock = socket.create_connection(("127.0.0.1", sink.port))
    with SMTPConnection(host="localhost", sock=sock, secure=True, tls=client_tls) as conn:
        assert conn.tls_mode == "implicit"
        conn.send(Envelope("a@x.org", "b@x.org"), b"given socket, TLS\r\n")
    assert len(sink.messages) == 1
