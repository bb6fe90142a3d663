"""Command line: ``smtppool demo`` sends a generated batch into an embedded local sink.

``main(argv)`` returns the exit status (0 success, 1 delivery or connection failure,
2 usage), so it is testable in-process without a subprocess.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage

from .connection import SMTPConnection
from .envelope import Envelope
from .errors import SMTPError

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


def _demo(args: argparse.Namespace) -> int:
    from .sink import Sink

    with Sink() as sink:
        print(f"sink listening on {sink.host}:{sink.port}")
        sent = failed = 0
        start = time.monotonic()
        with SMTPConnection(host=sink.host, port=sink.port) as conn:
            for index in range(args.count):
                message = _demo_message(index)
                try:
                    conn.send(Envelope(message["From"], message["To"]), message)
                    sent += 1
                except SMTPError as exc:
                    failed += 1
                    print(f"message {index}: {exc}", file=sys.stderr)
        elapsed = time.monotonic() - start
        received = len(sink.messages)
    rate = sent / elapsed if elapsed > 0 else float("inf")
    print(
        f"sent {sent}, failed {failed}, received by sink {received}, "
        f"{elapsed:.2f} s, {rate:.0f} messages/s, connections used {sink.connections_opened}"
    )
    return 0 if failed == 0 and received == sent else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtppool", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="send a generated batch to an embedded local sink")
    demo.add_argument("--count", type=int, default=1000, help="messages to send (default 1000)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if getattr(args, "count", 1) < 1:
        parser.print_usage(sys.stderr)
        print("smtppool: error: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        status: int = args.run(args)
    except SMTPError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return status
