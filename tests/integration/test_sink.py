"""The development sink's own lifecycle."""

from __future__ import annotations

import gc
import socket
import sys
import threading
import time
import warnings
from typing import Any

import pytest

from smtppool.sink import Sink


def test_stop_closes_connections_accepted_while_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections the loop accepts in the same turn as the shutdown starts become
    transports in tasks of their own; run after the server closed (or cancelled before
    they ran) they used to leave their sockets open."""
    leaks: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: leaks.append(repr(u.exc_value)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # raised in __del__: unraisable
        for _ in range(5):
            sink = Sink().start()
            loop: Any = sink._loop
            held = threading.Event()
            loop.call_soon_threadsafe(held.wait, 5)  # the loop is busy...
            clients = [socket.create_connection((sink.host, sink.port)) for _ in range(4)]
            stopper = threading.Thread(target=sink.stop)  # ...while stop() queues behind it
            stopper.start()
            time.sleep(0.1)
            held.set()  # now the accepts and the shutdown run in the same turns
            stopper.join(10)
            for client in clients:
                client.close()
            gc.collect()
    assert leaks == []
