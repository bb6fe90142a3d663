"""A TCP delay proxy: ``python -m benchmarks.proxy LISTEN_PORT TARGET_PORT DELAY_MS``.

Every chunk is forwarded ``DELAY_MS`` after it arrived, in order, in each direction, so a
round trip costs twice the delay: the kernel here has no netem.  One thread and
``select.select``, whose timeout has microsecond resolution: event loops built on epoll
round their timers up to whole milliseconds (an asyncio version of this proxy made a
nominal 20 ms round trip measure 21.6 ms), and a thread per direction queues for the GIL.
Every chunk waits the same delay, so one FIFO of all chunks is also in order of due time.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass


@dataclass(eq=False)
class Pair:
    """A client connection and the proxy's connection to the target."""

    ends: tuple[socket.socket, socket.socket]
    open: int = 2  # directions whose end of stream has not been forwarded yet


class Proxy:
    def __init__(self, listen: int, target: int, delay: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", listen), backlog=128)
        self.target = target
        self.delay = delay
        self.reading: dict[socket.socket, tuple[socket.socket, Pair]] = {}  # end -> other end
        self.due: deque[tuple[float, socket.socket, Pair, bytes]] = deque()  # b"": EOF

    def accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        for sock in (client, server):  # as asyncio does: small pipelined replies at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = Pair((client, server))
        self.reading[client] = (server, pair)
        self.reading[server] = (client, pair)

    def read(self, sock: socket.socket) -> None:
        target, pair = self.reading[sock]
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            del self.reading[sock]
        self.due.append((time.monotonic() + self.delay, target, pair, chunk))

    def forward(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, target, pair, chunk = self.due.popleft()
            if chunk:
                with contextlib.suppress(OSError):
                    target.sendall(chunk)
                continue
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
            pair.open -= 1
            if not pair.open:
                for end in pair.ends:
                    self.reading.pop(end, None)
                    end.close()

    def run(self) -> None:
        print("ready", flush=True)
        while True:
            now = time.monotonic()
            self.forward(now)
            timeout = max(self.due[0][0] - now, 0) if self.due else None
            readable, _, _ = select.select([self.listener, *self.reading], [], [], timeout)
            for sock in readable:
                if sock is self.listener:
                    self.accept()
                elif sock in self.reading:
                    self.read(sock)


if __name__ == "__main__":
    Proxy(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000).run()
