"""Fixtures of the in-memory unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from smtppool import SMTPConnection

from ..memory import MemoryServer


@pytest.fixture
def connect() -> Iterator[Callable[..., SMTPConnection]]:
    """Factory: a connected SMTPConnection to a MemoryServer; closed at teardown."""
    made: list[SMTPConnection] = []

    def make(server: MemoryServer, **options: object) -> SMTPConnection:
        conn = SMTPConnection(host="memory.test", sock=server.connect(), **options)
        made.append(conn)
        conn.connect()
        return conn

    yield make
    for conn in made:
        conn.close()
