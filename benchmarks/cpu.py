"""Python CPU per pipelined message, without a network: ``python -m benchmarks.cpu [N]``.

A socket stand-in answers every write at once with the replies smtp-sink would send, so
what is timed is smtppool's own work per message (commands, encoding, reply parsing,
results) and nothing the kernel or the sink does.  On a machine whose neighbours steal
CPU this varies far less than the loopback figures; the minimum of five runs is printed.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import cast

import smtppool

from .clients import FROM, TO, message

QUEUED = b"250 2.0.0 Ok: queued as 4F2A\r\n"
ENVELOPE_ACCEPTED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


class InstantServer:
    """Just enough of a socket for SMTPConnection: replies queued per write."""

    def __init__(self) -> None:
        self.replies = [b"220 sink ESMTP\r\n", b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"]
        self.timeout: float | None = None

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def setsockopt(self, *args: object) -> None:
        pass

    def send(self, data: bytes) -> int:
        if not data.startswith(b"EHLO"):
            reply = QUEUED * data.count(b"\r\n.\r\n")
            if b"MAIL FROM" in data:
                reply += ENVELOPE_ACCEPTED
            self.replies.append(reply)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.send(data)

    def recv(self, size: int) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def run(count: int) -> float:
    """Seconds of process CPU per message over ``count`` pipelined messages."""
    connection = smtppool.SMTPConnection(
        host="127.0.0.1",
        sock=cast(socket.socket, InstantServer()),  # duck-typed: the calls used are there
        max_messages=10**9,
        name="bench.example.com",
    )
    connection.connect()
    item = (smtppool.Envelope(FROM, TO), message())
    left = count - 1

    def more() -> tuple[smtppool.Envelope, bytes] | None:
        nonlocal left
        left -= 1
        return item if left >= 0 else None

    start = time.process_time()
    for outcome in connection.send_stream(item, more):
        assert isinstance(outcome, smtppool.SendResult), outcome
    return (time.process_time() - start) / count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    best = min(run(count) for _ in range(5))
    print(f"smtppool CPU per pipelined message, no network: {best * 1e6:.1f} us")


if __name__ == "__main__":
    main()
