"""Benchmark smtppool against its peers: ``python -m benchmarks [--quick] [--json PATH]``.

Every client sends the same 2 KB, one-recipient message to Postfix's ``smtp-sink`` (and,
for the RTT scenarios, through a userland delay proxy).  The sink and proxy are pinned to
core 1 and each client to core 0, because unpinned figures swing threefold on a
two-core machine.  Clients run interleaved, round after round; the report gives medians
with min-max and smtppool's ratio to each peer measured in the same run.

The full mode also measures delivery under pushback (``benchmarks/pushback.py``) and
stacked CHUNKING transactions by window at 20 and 80 ms (``benchmarks/stacking.py``).

smtppool's clients import the installed smtppool: in a virtualenv holding the compiled
wheel, "smtppool pool" is the compiled code and "pure Python" a copy of the source, both
in the same run.

Peers: smtplib (1 connection, and N threads each with its own), aiosmtplib (N
connections), Nodemailer's pool (installed with npm into a cache folder when missing)
and Postfix's smtp-source (C).  Needs the Debian package ``postfix`` for smtp-sink and
smtp-source; the MTA itself is never started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pushback
from .clients import PURE_SOURCE

HERE = Path(__file__).resolve().parent
NODE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smtppool-bench"
SINK_CORE, CLIENT_CORE = "1", "0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if shutil.which("taskset") else command


@contextlib.contextmanager
def process(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def sink_and_proxy(rtt_ms: float, chunking: bool = False) -> Iterator[int]:
    """Start a sink (and a delay proxy when rtt_ms > 0); yield the port to send to.

    The sink is Postfix's smtp-sink (PIPELINING, no CHUNKING), or with ``chunking`` the
    aiosmtpd-based ``smtppool sink`` offering PIPELINING and CHUNKING, so BDAT is measured.
    """
    sink_port = free_port()
    sink = ["smtp-sink", "-4", "-a", "-C", "-F", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"]
    if chunking:
        sink = [
            sys.executable,
            "-m",
            "smtppool",
            "sink",
            "--port",
            str(sink_port),
            "--extension",
            "PIPELINING",
            "--extension",
            "CHUNKING",
        ]
    with process(pinned(SINK_CORE, sink)):
        wait_for_port(sink_port)
        if not rtt_ms:
            yield sink_port
            return
        proxy_port = free_port()
        proxy = [
            sys.executable,
            "-m",
            "benchmarks.proxy",
            str(proxy_port),
            str(sink_port),
            str(rtt_ms / 2),
        ]
        with process(pinned(SINK_CORE, proxy)):
            wait_for_port(proxy_port)
            yield proxy_port


def round_trip_ms(port: int, pings: int = 21) -> float:
    """Median NOOP round trip to ``port``, as the clients see it (sink plus proxy)."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com", timeout=10)
    times = []
    for _ in range(pings):
        start = time.perf_counter()
        client.noop()
        times.append(time.perf_counter() - start)
    client.quit()
    return 1000 * statistics.median(times)


def ensure_peers() -> dict[str, bool]:
    """Find (or install) each peer; say which are usable."""
    available = {"smtp-source": shutil.which("smtp-source") is not None}
    try:
        import aiosmtplib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "aiosmtplib"], check=False)
    available["aiosmtplib"] = (
        subprocess.run([sys.executable, "-c", "import aiosmtplib"], capture_output=True).returncode
        == 0
    )
    if shutil.which("npm") and not (NODE_DIR / "node_modules" / "nodemailer").is_dir():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(NODE_DIR), "nodemailer"],
            check=False,
            capture_output=True,
        )
    available["nodemailer"] = (NODE_DIR / "node_modules" / "nodemailer").is_dir()
    return available


def core_ticks(core: str) -> list[int]:
    """Kernel tick counters of one core (user, nice, system, idle, ..., steal), or []."""
    with contextlib.suppress(OSError), open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                return [int(field) for field in line.split()[1:9]]
    return []


def core_shares(before: list[int], after: list[int]) -> tuple[float, float]:
    """Idle and stolen shares of a core's time between two core_ticks() readings."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    return delta[3] / total, delta[7] / total


def run_client(kind: str, port: int, count: int, conns: int) -> dict[str, float]:
    """Run one client pinned to the client core; return its measurements, with how much
    of each core's time was idle or stolen by the hypervisor meanwhile."""
    client_before, sink_before = core_ticks(CLIENT_CORE), core_ticks(SINK_CORE)
    result = _run_client(kind, port, count, conns)
    client_after, sink_after = core_ticks(CLIENT_CORE), core_ticks(SINK_CORE)
    if client_before and client_after and sink_before and sink_after:
        result["client_idle"], result["client_steal"] = core_shares(client_before, client_after)
        result["sink_steal"] = core_shares(sink_before, sink_after)[1]
    return result


def _run_client(kind: str, port: int, count: int, conns: int) -> dict[str, float]:
    if kind == "smtp-source":
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            pinned(
                CLIENT_CORE,
                [
                    "smtp-source",
                    "-s",
                    str(conns),
                    "-m",
                    str(count),
                    "-l",
                    "2048",
                    "-f",
                    "bench@example.com",
                    "-t",
                    "sink@example.com",
                    f"127.0.0.1:{port}",
                ],
            ),
            check=True,
            capture_output=True,
            timeout=600,
        )
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"count": count, "seconds": seconds, "cpu_seconds": cpu}
    if kind == "nodemailer":
        command = ["node", str(HERE / "nodemailer_pool.js"), str(port), str(count), str(conns)]
        env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    elif kind == "smtppool-pool-pure":
        command = [sys.executable, "-m", "benchmarks.clients", "smtppool-pool"]
        command += [str(port), str(count), str(conns)]
        env = {**os.environ, PURE_SOURCE: pure_source()}
    else:
        command = [
            sys.executable,
            "-m",
            "benchmarks.clients",
            kind,
            str(port),
            str(count),
            str(conns),
        ]
        env = dict(os.environ)
    out = subprocess.run(
        pinned(CLIENT_CORE, command),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=client_dir(),
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


@functools.cache
def client_dir() -> str:
    """Where clients run: a folder holding only a link to this package, so that
    ``import smtppool`` finds the installed smtppool (a compiled wheel, or the editable
    source), not the checkout beside ``benchmarks``."""
    folder = tempfile.mkdtemp(prefix="smtppool-bench-")
    (Path(folder) / "benchmarks").symlink_to(HERE, target_is_directory=True)
    return folder


@functools.cache
def pure_source() -> str:
    """A directory with a copy of the package's source and data, no compiled modules:
    what a pure-Python install (no C compiler) imports."""
    folder = tempfile.mkdtemp(prefix="smtppool-pure-")
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(HERE.parent / "smtppool", Path(folder) / "smtppool", ignore=ignore)
    return folder


@dataclass(frozen=True)
class Scenario:
    rtt_ms: float
    label: str
    kind: str
    connections: int
    count: int
    chunking: bool = False  #: against the CHUNKING sink instead of smtp-sink


CLIENTS = [  # (label, client kind, connections, CHUNKING sink)
    ("smtppool pool", "smtppool-pool", 5, False),
    ("smtppool pool, BDAT sink", "smtppool-pool", 5, True),
    ("smtppool pool, pure Python", "smtppool-pool-pure", 5, False),
    ("smtppool 1 connection", "smtppool-conn", 1, False),
    ("smtplib 1 connection", "smtplib", 1, False),
    ("smtplib 5 threads", "smtplib", 5, False),
    ("aiosmtplib 5 connections", "aiosmtplib", 5, False),
    ("Nodemailer pool", "nodemailer", 5, False),
    ("Nodemailer pool, BDAT sink", "nodemailer", 5, True),
    ("smtp-source", "smtp-source", 5, False),
]


#: Messages per loopback run in the peer table (full mode, --quick).
LOOPBACK_MESSAGES, QUICK_LOOPBACK_MESSAGES = 10_000, 3000


def scenarios(quick: bool) -> list[Scenario]:
    """Every client at every RTT, with message counts sized so each run takes seconds."""
    result = []
    for rtt in [0, 20]:
        for label, kind, conns, chunking in CLIENTS:
            if rtt:  # enough per connection that dialling and EHLO stay under 3 % of a run
                count = max(int(3200 / rtt), 10) * conns
            else:
                count = QUICK_LOOPBACK_MESSAGES if quick else LOOPBACK_MESSAGES
            result.append(Scenario(rtt, label, kind, conns, count, chunking))
    return result


#: Core-time shares recorded per run: the client core idle and stolen, the sink's stolen.
SHARES = ("client_idle", "client_steal", "sink_steal")


def summarise(samples: list[dict[str, float]]) -> dict[str, float]:
    rates = [s["count"] / s["seconds"] for s in samples]
    cpu = [1000 * s["cpu_seconds"] / s["count"] for s in samples]
    summary = {
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "cpu_ms_per_msg": statistics.median(cpu),
    }
    for share in SHARES:
        if all(share in s for s in samples):
            summary[share] = statistics.median(s[share] for s in samples)
    return summary


def shares_text(row: dict[str, Any]) -> str:
    """The three SHARES as whole percentages, or dashes where /proc/stat was unreadable."""
    return "".join(f"{100 * row[s]:>7.0f}" if s in row else f"{'-':>7}" for s in SHARES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the peer table (RTT 0 and 20 ms); no curves, no docs",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3 quick, 5 full)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if not shutil.which("smtp-sink"):
        print(
            "smtp-sink not found: apt-get install postfix (the MTA is not started)", file=sys.stderr
        )
        return 2
    available = ensure_peers()
    rounds = args.rounds or (3 if args.quick else 5)
    plan = [s for s in scenarios(args.quick) if available.get(s.kind, True)]
    samples: dict[tuple[float, str], list[dict[str, float]]] = {}
    measured_rtt: dict[float, float] = {}
    for rtt, chunking in sorted({(s.rtt_ms, s.chunking) for s in plan}):
        with sink_and_proxy(rtt, chunking) as port:
            if rtt and not chunking:
                measured_rtt[rtt] = round_trip_ms(port)
            for round_number in range(rounds):
                for s in plan:
                    if (s.rtt_ms, s.chunking) == (rtt, chunking):
                        result = run_client(s.kind, port, s.count, s.connections)
                        samples.setdefault((rtt, s.label), []).append(result)
                sink_name = "BDAT sink" if chunking else "smtp-sink"
                print(
                    f"rtt {rtt:g} ms, {sink_name}: round {round_number + 1}/{rounds} done",
                    file=sys.stderr,
                )
    order = [s.label for s in scenarios(quick=True)]
    report: list[dict[str, Any]] = [
        {"rtt_ms": rtt, "client": label, **summarise(runs), "runs": runs}
        for (rtt, label), runs in sorted(
            samples.items(), key=lambda item: (item[0][0], order.index(item[0][1]))
        )
    ]
    print_table(report, measured_rtt)
    host = machine()
    print(f"\nsmtppool compiled with mypyc: {', '.join(host['compiled']) or 'nothing'}")
    results: dict[str, Any] = {
        "machine": host,
        "rounds": rounds,
        "measured_rtt_ms": {str(rtt): ms for rtt, ms in measured_rtt.items()},
        "results": report,
    }
    if not args.quick:
        results["curves"] = curves()
        print(json.dumps(results["curves"], indent=1))
        from .report import write_docs

        write_docs(results, HERE.parent / "docs")
        results["pushback"] = pushback.run(rounds)
        print(pushback.table(results["pushback"]))
        pushback.write_section(HERE.parent / "docs", pushback.section(results["pushback"], rounds))
        from . import stacking  # it imports this module's helpers

        results["stacking"] = stacking.run(rounds)
        print(stacking.table(results["stacking"]))
        section = stacking.section(results["stacking"], rounds)
        pushback.write_section(HERE.parent / "docs", section, "stacking")
        print(f"wrote {HERE.parent / 'docs' / 'benchmarks.rst'} and its plots")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")
    return 0


def measure(rtt: float, kind: str, count: int, conns: int) -> dict[str, float]:
    with sink_and_proxy(rtt) as port:
        result = run_client(kind, port, count, conns)
    return {**result, "rate": result["count"] / result["seconds"]}


def curves() -> dict[str, Any]:
    """smtppool pool against connections and RTT, memory, and many callers (one round)."""
    out: dict[str, Any] = {"connections": [], "rtt": [], "memory": {}, "callers": []}
    for rtt in (0, 20):
        for conns in (1, 2, 5, 10, 20):
            count = 3000 if rtt == 0 else 80 * conns
            result = measure(rtt, "smtppool-pool", count, conns)
            out["connections"].append({"rtt_ms": rtt, "connections": conns, "rate": result["rate"]})
            print(
                f"curve: rtt {rtt} ms, {conns} connections: {result['rate']:.0f}/s", file=sys.stderr
            )
    for rtt in (0, 5, 20, 80):
        for kind in ("smtppool-pool", "nodemailer"):
            count = 3000 if rtt == 0 else max(int(1600 / rtt), 10) * 5
            result = measure(rtt, kind, count, 5)
            out["rtt"].append({"rtt_ms": rtt, "client": kind, "rate": result["rate"]})
            print(f"curve: {kind} at rtt {rtt} ms: {result['rate']:.0f}/s", file=sys.stderr)
    out["batch"] = batch_curve()
    big = measure(0, "big-file", 1024, 1)
    many = measure(0, "many", 100_000, 5)
    out["memory"] = {
        "file_1gb_rss_growth_mb": big["rss_growth_mb"],
        "file_1gb_seconds": big["seconds"],
        "send_many_100k_rss_growth_mb": many["rss_growth_mb"],
        "send_many_100k_rate": many["rate"],
    }
    for threads in (5, 1000):
        result = measure(0, "callers", 20_000, threads)
        out["callers"].append({"threads": threads, "rate": result["rate"]})
    return out


#: Messages per run for the batch-size curve; each run is a fresh process.
BATCH_SIZES = (1000, 3000, 10_000, 30_000)


def batch_curve(rounds: int = 3) -> list[dict[str, Any]]:
    """smtppool pool and Nodemailer at loopback by messages per run (interleaved medians).

    Nodemailer's CPU per message falls as V8 compiles its hot paths during a run, so its
    rate, and the ratio to it, depends on how many messages a run sends; smtppool's does not.
    """
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    with sink_and_proxy(0) as port:
        for _ in range(rounds):
            for count in BATCH_SIZES:
                for kind in ("smtppool-pool", "nodemailer"):
                    runs.setdefault((count, kind), []).append(run_client(kind, port, count, 5))
    out = []
    for (count, kind), samples in runs.items():
        summary = summarise(samples)
        out.append({"messages": count, "client": kind, **summary})
        print(
            f"curve: {kind}, {count} messages per run: {summary['rate']:.0f}/s, "
            f"{summary['cpu_ms_per_msg']:.3f} ms CPU each",
            file=sys.stderr,
        )
    return out


@functools.cache
def clients_compiled() -> list[str]:
    """The smtppool modules compiled in the install the clients import (from
    :func:`client_dir`), which is not the checkout this process may import."""
    probe = "import json, smtppool; print(json.dumps(smtppool.compiled_modules()))"
    compiled = subprocess.run(
        [sys.executable, "-c", probe], cwd=client_dir(), capture_output=True, text=True
    ).stdout
    return list(json.loads(compiled))


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "compiled": clients_compiled(),  # what the clients import
        "platform": sys.platform,
        "pinned": bool(shutil.which("taskset")),
    }


def ceiling(rtt_ms: float, connections: int = 5) -> float:
    """Messages/s at one round trip per message on every connection."""
    return connections * 1000 / rtt_ms


def print_table(report: list[dict[str, Any]], measured_rtt: dict[float, float]) -> None:
    for rtt in sorted({r["rtt_ms"] for r in report}):
        rows = [r for r in report if r["rtt_ms"] == rtt]
        ours = next((r for r in rows if r["client"] == "smtppool pool"), None)
        print(f"\nRTT {rtt:g} ms (medians, min-max; ratio = smtppool pool / client)")
        if rtt and ours:
            measured = measured_rtt.get(rtt, rtt)
            print(
                f"NOOP round trip measured {measured:.2f} ms; smtppool pool at "
                f"{ours['rate'] / ceiling(rtt):.2f} of the {ceiling(rtt):.0f}/s ceiling "
                f"({ours['rate'] / ceiling(measured):.2f} of {ceiling(measured):.0f}/s "
                "at the measured round trip)"
            )
        print(
            f"{'client':<28}{'msgs/s':>9}{'min-max':>17}{'CPU ms/msg':>12}{'ratio':>8}"
            f"{'idle%':>7}{'steal%':>7}{'sink%':>7}"
        )
        for r in rows:
            ratio = f"{ours['rate'] / r['rate']:.2f}" if ours else "-"
            span = f"{r['rate_min']:.0f}-{r['rate_max']:.0f}"
            print(
                f"{r['client']:<26}{r['rate']:>9.0f}{span:>17}{r['cpu_ms_per_msg']:>12.3f}"
                f"{ratio:>8}{shares_text(r)}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
