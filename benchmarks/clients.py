"""One benchmark client per process: ``python -m benchmarks.clients KIND PORT COUNT CONNS``.

Prints one JSON line: messages sent, wall seconds and this process's CPU seconds, both
measured over the sending phase only (imports and set-up excluded).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import smtplib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

FROM, TO = "bench@example.com", "sink@example.com"
#: A directory holding a source-only copy of the package: import smtppool from there,
#: as a pure-Python install would.
PURE_SOURCE = "SMTPPOOL_BENCH_PURE_SOURCE"
#: ``stack_messages`` for the smtppool pool clients (the option's default when unset).
STACK = "SMTPPOOL_BENCH_STACK"


def message(size: int = 2048) -> bytes:
    header = f"From: {FROM}\r\nTo: {TO}\r\nSubject: benchmark\r\n\r\n".encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = (line * (size // len(line) + 1))[: size - len(header) - 2] + b"\r\n"
    return header + body


#: When each sender had its last message accepted (``time.perf_counter()``).  The clock
#: stops at the latest, before the goodbyes, as Nodemailer's script stops it before
#: ``transport.close()``: a QUIT round trip is not part of moving mail.
DELIVERED: list[float] = []


def delivered() -> None:
    """Mark that this sender's last message was accepted."""
    DELIVERED.append(time.perf_counter())


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def shares(count: int, parts: int) -> list[int]:
    """``count`` split into ``parts`` nearly equal whole numbers."""
    return [count // parts + (i < count % parts) for i in range(parts)]


def run_threads(target: Callable[[int], None], counts: list[int]) -> None:
    """Run ``target(n)`` for each n in its own thread, and wait for them all."""
    threads = [threading.Thread(target=target, args=(n,)) for n in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def bench_pool(port: int, conns: int) -> Any:
    """The pool every smtppool pool client measures: connections never retired."""
    import smtppool

    stack = {"stack_messages": int(os.environ[STACK])} if os.environ.get(STACK) else {}
    return smtppool.SMTPPool(
        host="127.0.0.1",
        port=port,
        max_connections=conns,
        max_messages=10**9,
        name="bench.example.com",
        **stack,
    )


def smtppool_pool(port: int, count: int, conns: int) -> Callable[[], None]:
    import smtppool

    pool = bench_pool(port, conns)
    envelope, data = smtppool.Envelope(FROM, TO), message()

    def run() -> None:
        for outcome in pool.send_many((data, envelope) for _ in range(count)):
            assert not isinstance(outcome, smtppool.SMTPError), outcome
        delivered()
        pool.close()

    return run


def smtppool_conn(port: int, count: int, conns: int) -> Callable[[], None]:
    import smtppool

    connection = smtppool.SMTPConnection(
        host="127.0.0.1", port=port, max_messages=10**9, name="bench.example.com"
    )
    connection.connect()
    envelope, data = smtppool.Envelope(FROM, TO), message()

    def run() -> None:
        for _ in range(count):
            connection.send(envelope, data)
        delivered()
        connection.quit()

    return run


def _smtplib_worker(port: int, count: int) -> None:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com")
    data = message()
    for _ in range(count):
        client.sendmail(FROM, [TO], data)
    delivered()
    client.quit()


def smtplib_threads(port: int, count: int, conns: int) -> Callable[[], None]:
    return lambda: run_threads(lambda n: _smtplib_worker(port, n), shares(count, conns))


def aiosmtplib_conns(port: int, count: int, conns: int) -> Callable[[], None]:
    import aiosmtplib

    async def worker(n: int) -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, local_hostname="bench.example.com", start_tls=False
        )
        await client.connect()
        data = message()
        for _ in range(n):
            await client.sendmail(FROM, [TO], data)
        delivered()
        await client.quit()

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in shares(count, conns)))

    return lambda: asyncio.run(main())


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


#: Extra measurements a client reports beside its timings.
EXTRA: dict[str, float] = {}


def big_file(port: int, size_mb: int, conns: int) -> Callable[[], None]:
    """Stream one file of ``size_mb`` MB (the COUNT argument) through a connection."""
    import os
    import tempfile

    import smtppool

    path = os.path.join(tempfile.gettempdir(), f"smtppool-bench-{size_mb}mb.eml")
    if not os.path.exists(path) or os.path.getsize(path) < size_mb * 2**20:
        line = b"x" * 998 + b"\r\n"
        with open(path, "wb") as file:
            file.write(b"Subject: big\r\n\r\n")
            for _ in range(size_mb * 2**20 // len(line)):
                file.write(line)
    connection = smtppool.SMTPConnection(host="127.0.0.1", port=port, name="bench.example.com")
    connection.connect()
    envelope = smtppool.Envelope(FROM, TO)

    def run() -> None:
        before = rss()
        with open(path, "rb") as file:
            connection.send(envelope, file)
        connection.quit()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        EXTRA["rss_growth_mb"] = max(peak - before, 0) / 2**20

    return run


def many(port: int, count: int, conns: int) -> Callable[[], None]:
    """send_many over ``count`` messages, reporting RSS growth after the first tenth."""
    import smtppool

    pool = bench_pool(port, conns)
    envelope, data = smtppool.Envelope(FROM, TO), message()

    def run() -> None:
        warm = peak = 0
        for done, _ in enumerate(pool.send_many((data, envelope) for _ in range(count)), 1):
            if done == count // 10:
                warm = peak = rss()
            elif done % 1000 == 0 and warm:
                peak = max(peak, rss())
        pool.close()
        EXTRA["rss_growth_mb"] = (peak - warm) / 2**20

    return run


def callers(port: int, count: int, conns: int) -> Callable[[], None]:
    """``conns`` threads calling send() at once on a 5-connection pool, ``count`` in all."""
    import smtppool

    pool = bench_pool(port, 5)
    envelope, data = smtppool.Envelope(FROM, TO), message()
    pool.send(data, envelope)  # a warm connection before the clock starts

    def caller(n: int) -> None:
        for _ in range(n):
            pool.send(data, envelope)

    def run() -> None:
        run_threads(caller, shares(count, conns))
        pool.close()

    return run


def pushback(port: int, count: int, conns: int) -> Callable[[], None]:
    """``count`` messages with their own Message-IDs through a default pool of ``conns``
    connections, to a server that pushes back; reports how each ended."""
    import smtppool

    pool = smtppool.SMTPPool(host="127.0.0.1", port=port, max_connections=conns,
                             name="bench.example.com")  # fmt: skip
    envelope = smtppool.Envelope(FROM, TO)

    def raw(i: int) -> bytes:
        return (f"From: {FROM}\r\nTo: {TO}\r\nMessage-ID: <pushback-{i}@bench>\r\n"
                f"Subject: pushback {i}\r\n\r\nmessage {i}\r\n").encode()  # fmt: skip

    def run() -> None:
        outcomes = list(pool.send_many((raw(i), envelope) for i in range(count)))
        delivered()
        pool.close()
        errors = [o for o in outcomes if isinstance(o, smtppool.SMTPError)]
        EXTRA["sent"] = count - len(errors)
        EXTRA["unknown"] = sum(e.delivery_unknown for e in errors)
        EXTRA["failed"] = len(errors) - EXTRA["unknown"]

    return run


KINDS = {
    "smtppool-pool": smtppool_pool,
    "smtppool-conn": smtppool_conn,
    "smtplib": smtplib_threads,
    "aiosmtplib": aiosmtplib_conns,
    "big-file": big_file,
    "many": many,
    "callers": callers,
    "pushback": pushback,
}


def main() -> None:
    kind, port, count, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if os.environ.get(PURE_SOURCE):
        sys.path.insert(0, os.environ[PURE_SOURCE])
        import smtppool

        if smtppool.compiled_modules():
            raise SystemExit(f"{PURE_SOURCE} gave a compiled smtppool: {smtppool.__file__}")
    run = KINDS[kind](port, count, conns)
    cpu_start, wall_start = cpu(), time.perf_counter()
    run()
    wall, used = time.perf_counter() - wall_start, cpu() - cpu_start
    if DELIVERED:
        wall = max(DELIVERED) - wall_start
    print(json.dumps({"count": count, "seconds": wall, "cpu_seconds": used, **EXTRA}))


if __name__ == "__main__":
    main()
