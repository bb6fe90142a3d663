"""Python CPU per pipelined message, without a network: ``python -m benchmarks.cpu [N]``.

A socket stand-in answers every write at once with the replies smtp-sink would send (or,
for the CHUNKING figures, a CHUNKING server), so what is timed is smtppool's own work per
message (commands, encoding, reply parsing, results) and nothing the kernel or the sink
does.  CHUNKING is timed one transaction at a time (``stack_messages=1``) and stacked
(the default window).  On a machine whose neighbours steal
CPU this varies far less than the loopback figures; the minimum of five runs is printed.
"""

from __future__ import annotations

import socket
import sys
import time

import smtppool

from .clients import FROM, TO, message

QUEUED = b"250 2.0.0 Ok: queued as 4F2A\r\n"
ENVELOPE_ACCEPTED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
MAIL_RCPT_ACCEPTED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
RSET_OK = b"250 2.0.0 Ok\r\n"


class InstantServer(socket.socket):
    """A socket whose writes are answered at once with smtp-sink's replies, queued per
    write, and never reach a kernel.  A real socket underneath (one end of a socketpair)
    so ``get_socket`` accepts it and the pool can poll an idle connection."""

    def __init__(self, chunking: bool = False) -> None:
        ours, self._peer = socket.socketpair()
        super().__init__(ours.family, ours.type, ours.proto, fileno=ours.detach())
        self.chunking = chunking
        extensions = b"250-PIPELINING\r\n250-CHUNKING\r\n" if chunking else b"250-PIPELINING\r\n"
        self.replies = [b"220 sink ESMTP\r\n", b"250-sink\r\n" + extensions + b"250 8BITMIME\r\n"]

    def send(self, data: bytes, flags: int = 0) -> int:  # type: ignore[override]
        data = bytes(data)  # the stacked path writes memoryviews
        if data.startswith(b"QUIT"):
            self.replies.append(b"221 bye\r\n")
        elif self.chunking and not data.startswith(b"EHLO"):  # whole transactions per write
            self.replies.append(
                MAIL_RCPT_ACCEPTED * data.count(b"MAIL FROM:")
                + QUEUED * data.count(b"BDAT ")
                + RSET_OK * data.count(b"RSET\r\n")
            )
        elif not data.startswith(b"EHLO"):
            reply = QUEUED * data.count(b"\r\n.\r\n")
            if b"MAIL FROM" in data:
                reply += ENVELOPE_ACCEPTED
            self.replies.append(reply)
        return len(data)

    def sendall(self, data: bytes, flags: int = 0) -> None:  # type: ignore[override]
        self.send(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        self._peer.close()
        super().close()


def run(count: int, chunking: bool = False, stack: int = 16) -> float:
    """Seconds of process CPU per message over ``count`` pipelined messages (with
    ``chunking``, stacked ``stack`` at a time)."""
    connection = smtppool.SMTPConnection(
        host="127.0.0.1",
        sock=InstantServer(chunking),
        max_messages=10**9,
        name="bench.example.com",
        stack_messages=stack,
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


def run_pool(count: int) -> float:
    """Seconds of process CPU per message through ``send_many`` on a 5-connection pool
    whose connections all talk to an InstantServer: the connection's work plus the
    pool's (queue, completions, worker threads)."""
    pool = smtppool.SMTPPool(
        host="127.0.0.1",
        max_messages=10**9,
        name="bench.example.com",
        get_socket=lambda options: InstantServer(),
    )
    item = (message(), smtppool.Envelope(FROM, TO))
    with pool:
        for outcome in pool.send_many(item for _ in range(100)):  # connections opened
            assert isinstance(outcome, smtppool.SendResult), outcome
        start = time.process_time()
        for outcome in pool.send_many(item for _ in range(count)):
            assert isinstance(outcome, smtppool.SendResult), outcome
        return (time.process_time() - start) / count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    compiled = smtppool.compiled_modules()
    print("smtppool " + ("compiled: " + ", ".join(compiled) if compiled else "pure Python"))
    best = min(run(count) for _ in range(5))
    print(f"smtppool CPU per pipelined message, no network: {best * 1e6:.1f} us")
    best = min(run_pool(count) for _ in range(5))
    print(f"  through the pool (send_many, 5 connections): {best * 1e6:.1f} us")
    for stack in (1, 16):
        best = min(run(count, chunking=True, stack=stack) for _ in range(5))
        print(f"CHUNKING, stack_messages={stack}, one connection: {best * 1e6:.1f} us")


if __name__ == "__main__":
    main()
