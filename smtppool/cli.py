"""Command line: ``smtppool demo`` sends a generated batch through the pool into a local sink.

``main(argv)`` returns the exit status (0 success, 1 delivery or connection failure,
2 usage), so it is testable in-process without a subprocess.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage

from .errors import SMTPError
from .pool import SMTPPool

__all__ = ["main"]


def _demo_message(index: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "demo@smtppool.invalid"
    message["To"] = f"user{index}@example.invalid"
    message["Subject"] = f"smtppool demo message {index}"
    message["Message-ID"] = f"<demo-{index}@smtppool.invalid>"
    message.set_content(
        f"Hello from smtppool, message {index}.\n.\nThis line follows a lone dot.\n"
    )
    return message


def _progress(done: int, total: int, started: float) -> None:
    """A one-line progress bar on stderr, redrawn in place (only on a terminal)."""
    width = 30
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-9)
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.0f} msg/s",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


def _demo(args: argparse.Namespace) -> int:
    from .sink import Sink

    show_progress = sys.stderr.isatty()
    with Sink() as sink:
        print(f"sink listening on {sink.host}:{sink.port}")
        sent = failed = 0
        start = time.monotonic()
        with SMTPPool(host=sink.host, port=sink.port, max_connections=args.max_connections) as pool:
            messages = (_demo_message(index) for index in range(args.count))
            for done, outcome in enumerate(pool.send_many(messages), 1):
                if isinstance(outcome, SMTPError):
                    failed += 1
                    print(f"message {done - 1}: {outcome}", file=sys.stderr)
                else:
                    sent += 1
                if show_progress and (done % 50 == 0 or done == args.count):
                    _progress(done, args.count, start)
            elapsed = time.monotonic() - start
            stats = pool.stats()
        received = len(sink.messages)
    rate = sent / elapsed if elapsed > 0 else float("inf")
    print(
        f"sent {sent}, failed {failed}, received by sink {received}, {elapsed:.2f} s, "
        f"{rate:.0f} messages/s, connections used {stats['connections_opened']} "
        f"(max_connections={args.max_connections})"
    )
    return 0 if failed == 0 and received == sent else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtppool", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="send a generated batch to an embedded local sink")
    demo.add_argument("--count", type=int, default=1000, help="messages to send (default 1000)")
    demo.add_argument("--max-connections", type=int, default=5, help="pool size (default 5)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if getattr(args, "count", 1) < 1 or getattr(args, "max_connections", 1) < 1:
        parser.print_usage(sys.stderr)
        print("smtppool: error: --count and --max-connections must be at least 1", file=sys.stderr)
        return 2
    try:
        status: int = args.run(args)
    except SMTPError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return status
