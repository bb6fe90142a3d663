"""Delivery under pushback: ``python -m benchmarks.pushback [--rounds N]``.

smtppool's pool and Nodemailer's, five connections each, send the same messages to the
same fault-injecting server (``tests/faults.py``, seeded) under the same fault profiles:
a cap on sessions answered with 421, with 432 or with a hang-up, refusals and cuts at
random, a permanent 554 greeting.  The server counts what arrived, so "delivered" means
received (once) by the server whatever the client reported; it also counts sessions and
connection attempts.  ``python -m benchmarks`` runs this too; run alone, it rewrites only
its section of ``docs/benchmarks.rst``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults import Faults, FaultServer

HERE = Path(__file__).resolve().parent
NODE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smtppool-bench"
CONNECTIONS = 5
RUN_TIMEOUT = 300.0
SECTION_START, SECTION_END = ".. pushback: start", ".. pushback: end"


@dataclass(frozen=True)
class Profile:
    label: str
    faults: Faults
    count: int


PROFILES = [
    Profile("cap 2, 421 4.7.0 to the rest", Faults(cap=2), 1000),
    Profile("cap 2, hang-up before the greeting", Faults(cap=2, cap_reply=None), 1000),
    Profile(
        "cap 3, 432 4.3.2 (Outlook's words)",
        Faults(cap=3, cap_reply=b"432 4.3.2 Concurrent connections limit exceeded"),
        1000,
    ),
    Profile("421 to 30 % of connects, 3 % cut", Faults(refuse=0.3, drop=0.03, seed=16), 1000),
    Profile(
        "554 greeting (permanent)",
        Faults(refuse=1.0, refuse_reply=b"554 5.7.1 no SMTP service here"),
        50,
    ),
]
CLIENTS = {"smtppool pool": "smtppool", "Nodemailer pool": "nodemailer"}


def client_command(kind: str, port: int, count: int) -> tuple[list[str], dict[str, str]]:
    if kind == "nodemailer":
        command = ["node", str(HERE / "nodemailer_pushback.js")]
        env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    else:
        command = [sys.executable, "-m", "benchmarks.clients", "pushback"]
        env = dict(os.environ)
    return [*command, str(port), str(count), str(CONNECTIONS)], env


def run_once(profile: Profile, kind: str) -> dict[str, Any]:
    """One client against a fresh server with the profile's faults."""
    with FaultServer(profile.faults) as server:
        command, env = client_command(kind, server.port, profile.count)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env,
                cwd=HERE.parent, check=True,
            )  # fmt: skip
            reported = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            reported = {"seconds": RUN_TIMEOUT, "sent": None, "failed": None, "unknown": None}
        counts = server.message_counts()
        return {
            **{key: reported.get(key) for key in ("seconds", "sent", "failed", "unknown")},
            "delivered": len(counts),
            "duplicates": sum(n > 1 for n in counts.values()),
            "sessions": server.sessions,
            "connections": server.connections,
            "refused": server.refused,
        }


def run(rounds: int = 3) -> list[dict[str, Any]]:
    """Every profile for both clients, interleaved for ``rounds`` rounds; medians."""
    clients = {label: kind for label, kind in CLIENTS.items() if available(kind)}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_number in range(rounds):
        for profile in PROFILES:
            for label, kind in clients.items():
                runs.setdefault((profile.label, label), []).append(run_once(profile, kind))
        print(f"pushback: round {round_number + 1}/{rounds} done", file=sys.stderr)
    rows = []
    for profile in PROFILES:
        for label in clients:
            samples = runs[(profile.label, label)]
            median = {key: statistics.median(s[key] for s in samples) for key in
                      ("seconds", "delivered", "sessions", "connections", "refused")}  # fmt: skip
            rows.append({
                "profile": profile.label, "client": label, "count": profile.count, **median,
                "worst_delivered": min(s["delivered"] for s in samples),
                "duplicates": max(s["duplicates"] for s in samples),
                "unknown": max(s["unknown"] or 0 for s in samples),
                "timed_out": sum(s["sent"] is None for s in samples),
                "rate": median["delivered"] / median["seconds"],
            })  # fmt: skip
    return rows


def available(kind: str) -> bool:
    if kind != "nodemailer":
        return True
    return (NODE_DIR / "node_modules" / "nodemailer").is_dir()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'fault profile':<36}{'client':<17}{'delivered':>10}{'worst':>7}{'dupl':>6}"
        f"{'unknown':>8}{'msgs/s':>8}{'sessions':>9}{'dials':>7}"
    ]
    for r in rows:
        delivered = f"{100 * r['delivered'] / r['count']:.1f}%"
        worst = f"{100 * r['worst_delivered'] / r['count']:.1f}%"
        lines.append(
            f"{r['profile']:<36}{r['client']:<17}{delivered:>10}{worst:>7}{r['duplicates']:>6}"
            f"{r['unknown']:>8}{r['rate']:>8.0f}{r['sessions']:>9.0f}{r['connections']:>7.0f}"
            + ("  (timed out)" if r["timed_out"] else "")
        )
    return "\n".join(lines)


def section(rows: list[dict[str, Any]], rounds: int) -> str:
    """The reStructuredText section of docs/benchmarks.rst, between its markers."""
    body = "\n".join("   " + line for line in table(rows).splitlines())
    import smtppool

    install = ", ".join(smtppool.compiled_modules()) or "none (a pure-Python install)"
    return f"""{SECTION_START}

Delivery under pushback
-----------------------

Regenerated by ``python -m benchmarks`` or, alone, ``python -m benchmarks.pushback``.
Both pools (5 connections, default settings) send the same 2-line messages, each with
its own Message-ID, to a fresh ``tests/faults.py`` server per run with the same seeded
faults; {rounds} interleaved rounds, medians.  *delivered*: messages the server received
(its count, not the client's report); *worst*: the lowest of the rounds; *dupl*:
messages received more than once; *unknown*: failures smtppool reported
``delivery_unknown`` (cut after the end of data; Nodemailer reports none apart);
*msgs/s*: delivered per second of the run; *sessions*: sessions the server greeted;
*dials*: connections it accepted, refused ones included.  smtppool modules compiled:
{install}; Python {sys.version.split()[0]}.

.. code-block:: text

{body}

{SECTION_END}
"""


def write_section(docs: Path, text: str, name: str = "pushback") -> None:
    """Replace the section between ``.. <name>: start`` and ``.. <name>: end`` markers
    of docs/benchmarks.rst (or add it at the end); ``text`` carries the markers."""
    path = docs / "benchmarks.rst"
    current = path.read_text("utf-8") if path.exists() else ""
    start, end = f".. {name}: start", f".. {name}: end"
    if start in current:
        before = current[: current.index(start)]
        after = current[current.index(end) + len(end) :].lstrip("\n")
        current = before + text + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current, "utf-8")


def section_main(
    name: str,
    description: str | None,
    run: Callable[[int], list[dict[str, Any]]],
    table: Callable[[list[dict[str, Any]]], str],
    section: Callable[[list[dict[str, Any]], int], str],
    argv: list[str] | None,
) -> int:
    """The command line of a benchmark that regenerates one section of
    docs/benchmarks.rst: ``python -m benchmarks.<name> [--rounds N] [--no-docs]``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rows = run(args.rounds)
    print(table(rows))
    if not args.no_docs:
        write_section(HERE.parent / "docs", section(rows, args.rounds), name)
        print(f"wrote the {name} section of {HERE.parent / 'docs' / 'benchmarks.rst'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return section_main("pushback", __doc__, run, table, section, argv)


if __name__ == "__main__":
    raise SystemExit(main())
