"""Celery scaling: ``python -m benchmarks.celery_scaling [--rtt MS] [--messages N]``.

Sends one batch through 1, 2 and 4 ``smtppool.contrib.celery`` worker processes (each
with a pool of 2 connections) to a PIPELINING sink behind the delay proxy, first with
no shared limit (throughput should grow with the workers: the round trips, not the
CPU, bound each one) and then with a shared ``RedisLimiter`` rate the larger runs
exceed (throughput should flatten at the limit, and the sink should never see more
than the limit in any one-second window).  Needs ``redis-server`` and the ``celery``
extra; writes ``benchmarks/results/celery.json`` and ``docs/scaling.rst``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smtppool.contrib.celery import encode, make_app, register, send_batch, settings_from_env
from smtppool.sink import Sink

from .__main__ import HERE, SINK_CORE, free_port, pinned, process, wait_for_port

WORKER_COUNTS = (1, 2, 4)


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with process(pinned(SINK_CORE, command)):
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def workers(count: int, environ: dict[str, str]) -> Iterator[None]:
    """``count`` worker processes (one pool process each), ready when this yields."""
    folder = Path(tempfile.mkdtemp(prefix="smtppool-bench-celery-"))
    procs = []
    try:
        for index in range(count):
            log = (folder / f"{index}.log").open("wb")
            command = [sys.executable, "-m", "celery", "-A", "smtppool.contrib.celery",
                       "worker", "--pool", "prefork", "--concurrency", "1",
                       "-n", f"bench{index}@localhost", "--without-gossip", "--without-mingle",
                       "--without-heartbeat", "--loglevel", "WARNING"]  # fmt: skip
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **environ}))  # fmt: skip
        ping = make_app(environ).control
        deadline = time.monotonic() + 60
        while len(ping.ping(timeout=0.5) or []) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not ready in 60 s")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(sink: Sink, broker: str, port: int, count: int, messages: int,
        rate_limit: int | None) -> dict[str, Any]:  # fmt: skip
    environ = {
        "SMTPPOOL_BROKER": broker,
        "SMTPPOOL_URL": f"smtp://127.0.0.1:{port}/?max_connections=2",
        "SMTPPOOL_LIMIT_KEY": f"bench-{time.monotonic()}",
    }
    if rate_limit is not None:
        environ["SMTPPOOL_RATE_LIMIT"] = str(rate_limit)
    task = register(make_app(environ), settings_from_env)
    batch = [
        encode(b"From: a@example.test\r\nTo: b@example.test\r\nSubject: scale\r\n\r\n"
               + (b"x" * 78 + b"\r\n") * 25, key=f"{environ['SMTPPOOL_LIMIT_KEY']}-{i}")
        for i in range(messages)
    ]  # fmt: skip
    with workers(count, environ):
        before = len(sink.messages)
        started = time.monotonic()
        outcomes = send_batch(task, batch, chunk_size=50).outcomes(timeout=600)
        elapsed = time.monotonic() - started
    received = sink.messages[before:]
    sent = sum(1 for outcome in outcomes if outcome["status"] == "sent")
    if sent < messages:
        print("not sent:", next(o for o in outcomes if o["status"] != "sent"), file=sys.stderr)
    return {
        "workers": count,
        "rate_limit": rate_limit,
        "messages": messages,
        "sent": sent,
        "received": len(received),
        "seconds": round(elapsed, 2),
        "rate": round(sent / elapsed, 1),
        "max_in_one_second": max_in_window([m.received_at for m in received], 1.0),
        "max_in_0.95_seconds": max_in_window([m.received_at for m in received], 0.95),
    }


def write_doc(results: dict[str, Any], path: Path) -> None:
    rule = "======= ========== ========== ========== ========== ==========="
    rows = [
        f"{r['workers']:>7} {r['rate_limit'] or '—':>10} {r['rate']:>10} "
        f"{r['max_in_one_second']:>10} {r['max_in_0.95_seconds']:>10} "
        f"{r['sent']:>6}/{r['messages']}"
        for r in results["runs"]
    ]
    path.write_text(
        "Scaling out with Celery\n=======================\n\n"
        ".. Written by ``python -m benchmarks.celery_scaling``; do not edit by hand.\n\n"
        f"{results['messages']} messages of 2 KB through 1, 2 and 4 Celery worker processes "
        "(``smtppool.contrib.celery``, a pool of 2 connections each) to a PIPELINING sink "
        f"behind the delay proxy at {results['rtt_ms']:g} ms RTT, with no shared limit and "
        f"with a shared ``RedisLimiter`` of {results['limit']} messages per second.  The "
        "last columns are the most messages the sink received in any window of 1 s and "
        "of 0.95 s.  The window is kept in Redis on timestamps the workers take as they ask; "
        "between the grant "
        "and the sink's timestamp each message spends a few milliseconds that vary (thread "
        "wake-ups on a machine running the workers, the proxy, Redis and the sink "
        "together), which lets a 1 s window at the sink hold slightly more than the "
        f"limit.  Machine: {os.cpu_count()} cores.\n\n"
        f"{rule}\nworkers shared/s   msgs/s     max 1 s    max 0.95 s sent\n{rule}\n"
        + "\n".join(rows)
        + f"\n{rule}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.celery_scaling")
    parser.add_argument("--rtt", type=float, default=20.0, help="milliseconds (default 20)")
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--limit", type=int, default=100, help="shared messages/s")
    args = parser.parse_args(argv)
    if not shutil.which("redis-server"):
        print("redis-server not found: apt-get install redis-server", file=sys.stderr)
        return 2
    runs = []
    with Sink(extensions=["PIPELINING"]) as sink, redis_server() as broker:
        proxy_port = free_port()
        proxy = [sys.executable, "-m", "benchmarks.proxy", str(proxy_port), str(sink.port),
                 str(args.rtt / 2)]  # fmt: skip
        with process(pinned(SINK_CORE, proxy)):
            wait_for_port(proxy_port)
            for limit in (None, args.limit):
                for count in WORKER_COUNTS:
                    result = run(sink, broker, proxy_port, count, args.messages, limit)
                    print(json.dumps(result), file=sys.stderr)
                    runs.append(result)
    results = {"rtt_ms": args.rtt, "messages": args.messages, "limit": args.limit, "runs": runs}
    out = HERE / "results" / "celery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    write_doc(results, HERE.parent / "docs" / "scaling.rst")
    print((HERE.parent / "docs" / "scaling.rst").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
