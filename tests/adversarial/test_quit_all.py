"""quit_all: every QUIT leaves before any reply is awaited, so N sessions close in one
round trip (the pool's close() and its housekeeper use it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from smtppool import SMTPConnection
from smtppool.connection import quit_all

from ..servers import Peer, hello


@contextmanager
def quit_server(answers: list[bytes]) -> Iterator[tuple[list[SMTPConnection], list[bool]]]:
    """One connected session per answer; the server answers no QUIT until every session
    has sent one (a client waiting for each reply before the next QUIT would leave the
    later ones missing), then sends each session its answer.  Yields the sessions and,
    per session, whether its QUIT arrived in time (filled in after the block)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    peers: list[Peer] = []
    quit_arrived: list[bool] = []

    def serve() -> None:
        for _ in answers:
            peer = Peer(listener.accept()[0])
            peers.append(peer)
            for step in hello():
                step(peer)
        for peer in peers:
            try:
                peer.read_until(b"QUIT\r\n", timeout=3)
                quit_arrived.append(True)
            except AssertionError:
                quit_arrived.append(False)
        for peer, answer in zip(peers, answers, strict=True):
            peer.sock.sendall(answer)
            peer.sock.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    connections = [
        SMTPConnection(host="127.0.0.1", port=port, socket_timeout=5, greeting_timeout=5)
        for _ in answers
    ]
    try:
        for connection in connections:
            connection.connect()
        yield connections, quit_arrived
    finally:
        server.join(15)
        listener.close()


def test_every_quit_is_written_before_any_reply_is_awaited() -> None:
    with quit_server([b"221 bye\r\n"] * 3) as (connections, quit_arrived):
        quit_all(connections)
    assert quit_arrived == [True] * 3
    assert not any(connection.is_connected for connection in connections)


def test_a_bad_goodbye_is_ignored_and_every_session_closed() -> None:
    """A malformed reply to QUIT ends the session as surely as a 221: it used to raise
    ProtocolError out of quit_all(), which killed the pool worker retiring the
    connection and left the pool counting a worker that no longer ran."""
    with quit_server([b"garbage\r\n", b"221 bye\r\n"]) as (connections, quit_arrived):
        quit_all(connections)
    assert quit_arrived == [True, True]
    assert not any(connection.is_connected for connection in connections)


def test_sessions_already_gone_are_skipped() -> None:
    never_connected = SMTPConnection(host="127.0.0.1", port=9)
    quit_all([never_connected, never_connected])
    assert not never_connected.is_connected
