"""What the command line prints: text escaped for a terminal, progress, the summary.

Everything shown (server replies, message fields, file names) goes through
:func:`printable`, so it is shown, never obeyed by the terminal.
"""

from __future__ import annotations

import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .batch import BatchReport

__all__ = ["echo", "plain_progress", "print_summary", "printable", "progress"]

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
#: Distinct failures the summary shows before pointing at the report.
SUMMARY_KINDS = 5
#: Message ids shown for each kind of failure.
SUMMARY_IDS = 3


def printable(text: str) -> str:
    """``text`` with everything a terminal would act on rather than show escaped
    (``\\x1b``, ``\\u202e``): C0 and C1 controls but tab and line feed, format characters
    (bidirectional overrides and marks) and line and paragraph separators.  What a server
    or a message says is shown, never obeyed.  CRLF line ends become LF."""
    return "".join(
        ascii(c)[1:-1] if c not in "\t\n" and unicodedata.category(c) in _UNSAFE else c
        for c in text.replace("\r\n", "\n")
    )


#: Unicode categories printable() escapes: controls, format, line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def echo(text: str, *, file: TextIO | None = None, flush: bool = False) -> None:
    """print() for everything the command line shows: server replies, message fields
    and file names included."""
    print(printable(text), file=file or sys.stdout, flush=flush)


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """Yield a callable that advances a progress bar (rate and ETA) by one message."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        yield from plain_progress(total, label)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    with Progress(*columns) as progress:
        task = progress.add_task(label, total=total)

        def advance() -> None:
            done = progress.tasks[0].completed + 1
            rate = done / max(time.monotonic() - start, 1e-9)
            progress.update(task, advance=1, description=f"{label} {rate:.0f} msg/s")

        yield advance


def plain_progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    start, done = time.monotonic(), 0

    def draw() -> None:
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate else 0
        width = 30
        bar = "#" * (width * done // max(total, 1))
        print(
            f"\r{label} [{bar:<{width}}] {done}/{total} {rate:.0f} msg/s ETA {eta:.0f} s",
            end="\n" if done == total else "",
            file=sys.stderr,
            flush=True,
        )

    def advance() -> None:
        nonlocal done
        done += 1
        if done % 20 == 0 or done == total:
            draw()

    yield advance
    if done != total:  # stopped short: the bar ends where the batch did, on its own line
        draw()
        print(file=sys.stderr)


def print_summary(report: BatchReport, stats: dict[str, int] | None) -> None:
    """The counts, and each message that was not sent; ``stats`` of a local pool."""
    rate = report.count("sent") / report.elapsed if report.elapsed > 0 else 0.0
    rows: list[tuple[str, object]] = [
        ("sent", report.count("sent")),
        ("failed", report.count("failed")),
        ("not sent", report.count("not sent")),
        ("unknown", report.count("unknown")),
        ("elapsed", f"{report.elapsed:.2f} s"),
        ("rate", f"{rate:.0f} msg/s"),
    ]
    if stats is not None:
        rows += [("connections", stats["connections_opened"]), ("retried", stats["retried"])]
    for name, value in rows:
        echo(f"{name:<12}{value:>12}")
    # Failures alike but for their numbers (ports, waits) are one kind, in order of first.
    groups: dict[tuple[str, str, str], tuple[str, list[str]]] = {}
    for outcome in report.outcomes:
        if outcome.status != "sent":
            error = outcome.error or {}
            response = error.get("response") or ""
            reason = f"{error.get('code')}: {error.get('message')}" + (
                f" ({response})" if response else ""
            )
            reply = response.split(" ")[:2]  # "550 5.1.1": kept apart
            kind = (outcome.status, " ".join(reply), _NUMBER.sub("#", reason))
            groups.setdefault(kind, (reason, []))[1].append(outcome.id)
    for (status, _, _), (reason, ids) in list(groups.items())[:SUMMARY_KINDS]:
        shown = ", ".join(ids[:SUMMARY_IDS]) + (f" and {len(ids) - SUMMARY_IDS} more"
                                                 if len(ids) > SUMMARY_IDS else "")  # fmt: skip
        echo(f"{status} x{len(ids)}: {reason}\n    {shown}", file=sys.stderr)
    if len(groups) > SUMMARY_KINDS:
        echo(f"... and {len(groups) - SUMMARY_KINDS} other kinds of failure", file=sys.stderr)
