"""quit_all: every QUIT leaves before any reply is awaited, so N sessions close in one
round trip (the pool's close() and idle reaper use it)."""

from __future__ import annotations

import socket
import threading

from smtppool import SMTPConnection
from smtppool.connection import quit_all

from ..servers import Peer, hello

SESSIONS = 3


def test_every_quit_is_written_before_any_reply_is_awaited() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    peers: list[Peer] = []
    quit_arrived: list[bool] = []

    def serve() -> None:
        for _ in range(SESSIONS):
            peer = Peer(listener.accept()[0])
            peers.append(peer)
            for step in hello():
                step(peer)
        # Answer no QUIT until every session has sent one: a client that waits for
        # each reply before the next QUIT would leave the later ones missing here.
        for peer in peers:
            try:
                peer.read_until(b"QUIT\r\n", timeout=3)
                quit_arrived.append(True)
            except AssertionError:
                quit_arrived.append(False)
        for peer in peers:
            peer.sock.sendall(b"221 bye\r\n")
            peer.sock.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    connections = [
        SMTPConnection(host="127.0.0.1", port=port, socket_timeout=5, greeting_timeout=5)
        for _ in range(SESSIONS)
    ]
    for connection in connections:
        connection.connect()
    quit_all(connections)
    server.join(15)
    listener.close()
    assert quit_arrived == [True] * SESSIONS
    assert not any(connection.is_connected for connection in connections)


def test_sessions_already_gone_are_skipped() -> None:
    never_connected = SMTPConnection(host="127.0.0.1", port=9)
    quit_all([never_connected, never_connected])
    assert not never_connected.is_connected
