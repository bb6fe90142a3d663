"""Hostile TLS behaviour: STARTTLS response injection, TLS dropped without close_notify."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from smtppool import ProtocolError, SMTPConnection

from ..servers import Peer, ScriptedServer, expect, expect_eof, hello, send, starttls

Scripted = Callable[..., ScriptedServer]


def test_starttls_response_injection(scripted: Scripted, client_tls: dict[str, Any]) -> None:
    """Plaintext sent right after the 220 must never be read as a post-TLS reply."""
    server = scripted(
        [
            *hello("STARTTLS"),
            expect(b"STARTTLS"),
            send(b"220 go ahead\r\n250-injected.example\r\n250 AUTH PLAIN\r\n"),
            expect_eof(),
        ]
    )
    conn = SMTPConnection(host="localhost", port=server.port, tls=client_tls)
    with pytest.raises(ProtocolError, match="STARTTLS reply"):
        conn.connect()
    assert not conn.is_connected and not conn.secure
    server.stop()
    assert server.received.endswith(b"STARTTLS\r\n")  # no handshake was attempted


def test_tls_dropped_without_close_notify_on_quit(
    scripted: Scripted, client_tls: dict[str, Any], server_tls_context: ssl.SSLContext
) -> None:
    def drop_raw(peer: Peer) -> None:
        """Close the TCP connection under the TLS layer: no close_notify is sent."""
        raw = socket.socket(fileno=peer.sock.detach())
        raw.close()

    server = scripted(
        [
            *hello("STARTTLS"),
            expect(b"STARTTLS"),
            send(b"220 go\r\n"),
            starttls(server_tls_context),
            expect(b"EHLO"),
            send(b"250 tls.example\r\n"),
            expect(b"QUIT"),
            drop_raw,
        ]
    )
    conn = SMTPConnection(host="localhost", port=server.port, tls=client_tls, socket_timeout=5)
    conn.connect()
    assert conn.secure
    conn.quit()  # must neither raise nor hang
    assert not conn.is_connected
