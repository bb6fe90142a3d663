"""Command line: ``smtppool send | verify | sink | demo``.

``main(argv)`` returns the exit status (0 success; 1 a delivery, connection or
configuration failure; 2 usage; 130 interrupted), so it is testable in-process.  The
server comes from ``--url``, else ``SMTPPOOL_URL``, with individual flags overriding it.
Progress bars use ``rich`` when it is installed (the ``cli`` extra) and stderr is a
terminal; otherwise the output is plain text.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.metadata
import json
import mailbox
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .batch import BatchReport, Outcome, content_digest, iter_items, run_batch
from .config import Options
from .connection import SMTPConnection
from .console import echo, print_summary, printable, progress
from .envelope import Envelope
from .errors import SMTPError
from .pool import SMTPPool

__all__ = ["main", "printable"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


#: Numbers in an error message (ports, waits), ignored when failures are grouped; the
#: server's reply code and enhanced status are not.
class UsageError(ValueError):
    """The command cannot run as given (no server, a bad option, a missing path):
    exit status 2, as for argparse's own usage errors."""


# -- server options ------------------------------------------------------------------------


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "server (default: $SMTPPOOL_URL)",
        "A password given on the command line (--password, or inside --url) shows in ps "
        "and in shell history: prefer $SMTPPOOL_PASSWORD, $SMTPPOOL_URL or "
        "--password-file; with --user and none of them, a terminal is asked for it.",
    )
    group.add_argument("--url", help="smtp://user:password@host:port/?options")
    group.add_argument("--service", help="well-known provider, e.g. gmail")
    group.add_argument("--host")
    group.add_argument("--port", type=int)
    group.add_argument("--secure", action="store_true", default=None, help="implicit TLS")
    group.add_argument("--require-tls", action="store_true", default=None)
    group.add_argument("--ignore-tls", action="store_true", default=None)
    group.add_argument("--user", help="login name ($SMTPPOOL_PASSWORD holds the password)")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument("--password", help="the password (visible to other users; see above)")
    secret.add_argument(
        "--password-file", metavar="PATH", help="read the password from this file's first line"
    )
    group.add_argument("--cafile", help="trust these CA certificates instead of the system's")
    group.add_argument("--timeout", type=float, help="seconds for each network step")
    group.add_argument(
        "--allow-plaintext-auth",
        action="store_true",
        help="send the password without TLS to a host that is not loopback",
    )


def _options(args: argparse.Namespace, **extra: Any) -> Options:
    """The settings from the server arguments and the environment.

    :raises UsageError: no server given, or a setting that is not valid.
    """
    url = args.url or os.environ.get("SMTPPOOL_URL")
    if not (url or args.host or args.service):
        raise UsageError("no server: give --url, --host or --service, or set $SMTPPOOL_URL")
    try:
        return _settings(args, url, extra)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def _settings(args: argparse.Namespace, url: str | None, extra: dict[str, Any]) -> Options:
    settings: dict[str, Any] = {}
    for name in ("service", "host", "port", "secure", "require_tls", "ignore_tls"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    parts = urllib.parse.urlsplit(url or "")
    if args.url and parts.password is not None:
        _warn_password_in_argv("--url")
    user = args.user or urllib.parse.unquote(parts.username or "")
    if user:
        in_url = urllib.parse.unquote(parts.password) if parts.password is not None else None
        settings["auth"] = (user, _password(args, user, in_url))
    elif args.password is not None or args.password_file:
        raise ValueError("a password needs a user: --user, or one in the URL")
    if args.cafile:
        settings["tls"] = {"cafile": args.cafile}
    if args.allow_plaintext_auth:
        settings["allow_plaintext_auth"] = True
    if args.timeout:
        settings.update(
            connection_timeout=args.timeout,
            greeting_timeout=args.timeout,
            socket_timeout=args.timeout,
            pool_timeout=args.timeout,
        )
    settings.update({k: v for k, v in extra.items() if v is not None})
    return Options.from_settings(url=url, **settings)


def _password(args: argparse.Namespace, user: str, in_url: str | None) -> str:
    """The password for ``user``: from --password (with a warning), --password-file,
    the URL, $SMTPPOOL_PASSWORD, or asked on the terminal, in that order.

    :raises ValueError: none of them, and no terminal to ask.
    """
    if args.password is not None:
        _warn_password_in_argv("--password")
        return str(args.password)
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as file:
                return file.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read --password-file: {exc}") from exc
    if in_url is not None:
        return in_url
    if "SMTPPOOL_PASSWORD" in os.environ:
        return os.environ["SMTPPOOL_PASSWORD"]
    if not sys.stdin.isatty():
        raise ValueError(f"no password for {user}: set $SMTPPOOL_PASSWORD or use --password-file")
    return getpass.getpass(f"password for {user}: ")


def _warn_password_in_argv(option: str) -> None:
    echo(
        f"warning: the password in {option} shows in ps and shell history; "
        "use $SMTPPOOL_PASSWORD, $SMTPPOOL_URL or --password-file",
        file=sys.stderr,
    )


# -- commands ------------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    if args.via == "celery":
        if args.resume:
            raise UsageError("--resume works with --via pool (the Celery workers keep their "
                             "own record of what was sent)")  # fmt: skip
        _count(args.paths)  # every path exists: else a usage error, before anything is sent
        return _send_via_celery(args)
    options = _options(
        args,
        max_connections=args.max_connections,
        max_messages=args.max_messages,
        rate_limit=args.rate_limit,
        rate_delta=args.rate_delta,
    )
    envelope = _envelope(args)
    skipped = _already_sent(args.resume, args.paths) if args.resume else {}
    total = _count(args.paths) - len(skipped)  # a cheap first pass, for the ETA
    items = (item for item in iter_items(args.paths) if item.id not in skipped)
    with SMTPPool(options=options) as pool:  # closing twice is harmless after an interrupt
        with progress(total, "sending") as advance:
            report = run_batch(
                pool,
                items,
                envelope=envelope,
                on_outcome=lambda outcome: _advance_unless_unsent(outcome, advance),
            )
    report.outcomes[:0] = skipped.values()
    print_summary(report, pool.stats())
    return _finish(args, report, total + len(skipped))


def _count(paths: list[str]) -> int:
    try:
        return sum(1 for _ in iter_items(paths))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc


def _advance_unless_unsent(outcome: Outcome, advance: Callable[[], None]) -> None:
    """The progress bar counts what was tried, so a stopped batch ends where it stopped."""
    if outcome.status != "not sent":
        advance()


def _already_sent(report: str, paths: list[str]) -> dict[str, Outcome]:
    """The messages of ``paths`` that an earlier run's ``report`` says were sent, by id:
    the same id (path, or mailbox and key) and the same content.

    :raises UsageError: the report cannot be read, or none of what it says was sent is
        among ``paths`` (other paths given, say: everything would be sent again).
    """
    try:
        earlier = json.loads(Path(report).read_text("utf-8"))
        sent = {e["id"]: Outcome(**e) for e in earlier["messages"] if e["status"] == "sent"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot resume from {report}: {exc}") from exc
    skipped: dict[str, Outcome] = {}
    try:
        for item in iter_items(paths):
            outcome = sent.get(item.id)
            if outcome is not None and outcome.digest in (None, content_digest(item.load())):
                skipped[item.id] = outcome
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if sent and not skipped:
        raise UsageError(
            f"none of the {len(sent)} message(s) {report} says were sent is among these "
            "paths (give the same paths as the first run), so all would be sent again"
        )
    unmatched = len(sent) - len(skipped)
    echo(
        f"skipping {len(skipped)} message(s) already sent (per {report})"
        + (f"; {unmatched} sent then are not here or have changed" if unmatched else "")
    )
    return skipped


def _finish(args: argparse.Namespace, report: BatchReport, total: int) -> int:
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_json(), indent=1), "utf-8")
    elif any(o.status != "sent" for o in report.outcomes):
        echo("write every message's fate with --report FILE (and resume with --resume FILE)",
               file=sys.stderr)  # fmt: skip
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.count("sent") == total else EXIT_FAILED


def _envelope(args: argparse.Namespace) -> Envelope | None:
    if not args.to:
        return None
    if not args.sender:
        raise ValueError("--to needs --from as well")
    return Envelope(args.sender, args.to)


def _send_via_celery(args: argparse.Namespace) -> int:
    """Enqueue the batch to the Celery workers of ``smtppool.contrib.celery`` (which
    bring their own server settings and limits) and report every message's fate."""
    from .contrib.celery import encode, send_batch, send_messages

    envelope = _envelope(args)
    encoded: list[dict[str, Any]] = []
    order: list[tuple[str, str | Outcome]] = []  # (item id, its key, or why it was not sent)
    for item in iter_items(args.paths):
        try:
            encoded.append(encode(item.load(), envelope))
        except (ValueError, OSError) as exc:  # unreadable file, no envelope
            order.append((item.id, Outcome.of(item.id, exc)))
            continue
        order.append((item.id, encoded[-1]["key"]))
    report = BatchReport()
    started = time.monotonic()
    by_key: dict[str, Any] = {}
    with progress(len(encoded), "sending via celery") as advance:
        if encoded:
            batch = send_batch(send_messages, encoded, chunk_size=args.chunk_size)
            for outcome in batch.iter_outcomes(args.wait):
                by_key[outcome["key"]] = outcome
                advance()
    report.outcomes = [
        fate if isinstance(fate, Outcome) else Outcome.of_task(item_id, by_key[fate])
        for item_id, fate in order
    ]
    report.elapsed = time.monotonic() - started
    print_summary(report, None)
    return _finish(args, report, len(order))


def _verify(args: argparse.Namespace) -> int:
    connection = SMTPConnection(options=_options(args))
    try:
        connection.connect()
        connection.login()
        tls = "none"
        if connection.secure:
            tls = f"{connection.tls_version} ({connection.tls_mode}), {connection.tls_cipher}"
        opts = connection.options
        echo(f"{'server':<12}{opts.host}:{opts.port}")
        echo(f"{'tls':<12}{tls}")
        echo(f"{'extensions':<12}{' '.join(_describe(connection.extensions)) or '-'}")
        auth = " ".join(sorted(connection.extensions.auth_mechanisms)) or "-"
        echo(f"{'auth':<12}{auth}")
        echo(f"{'login':<12}{'ok as ' + opts.auth.user if opts.auth else 'not configured'}")
    finally:
        connection.quit()
    echo(f"{'result':<12}OK")
    return EXIT_OK


def _describe(extensions: Any) -> Iterator[str]:
    for keyword in extensions:
        params = extensions[keyword]
        yield f"{keyword}={params}" if params and keyword != "AUTH" else keyword


def _sink(args: argparse.Namespace) -> int:
    from .sink import ReceivedMessage, Sink

    received = threading.Event()
    count = 0
    maildir = mailbox.Maildir(args.maildir, create=True) if args.maildir else None

    def deliver(message: ReceivedMessage) -> None:
        nonlocal count
        if maildir is not None:
            maildir.add(f"Return-Path: <{message.mail_from}>\r\n".encode() + message.data)
        if args.print or maildir is None:
            echo(
                f"--- from <{message.mail_from}> to {', '.join(message.rcpt_tos)} "
                f"({len(message.data)} bytes)",
                flush=True,
            )
            if args.print:
                echo(message.data.decode("utf-8", "replace"), flush=True)
        count += 1
        if args.count and count >= args.count:
            received.set()

    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)
    credentials = dict(pair.split(":", 1) for pair in args.auth)
    sink = Sink(
        args.host,
        args.port,
        tls_context=tls_context,
        credentials=credentials,
        extensions=args.extension,
        on_message=deliver,
        keep_messages=False,  # each is written or printed as it comes
    )
    with sink:
        echo(f"listening on {sink.host}:{sink.port}", flush=True)
        try:
            while not received.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    echo(f"received {count} message(s)", flush=True)
    return EXIT_OK


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

    with Sink(extensions=["PIPELINING"]) as sink:
        echo(f"sink listening on {sink.host}:{sink.port}")
        sent = failed = 0
        start = time.monotonic()
        with SMTPPool(host=sink.host, port=sink.port, max_connections=args.max_connections) as pool:
            messages = (_demo_message(index) for index in range(args.count))
            with progress(args.count, "demo") as advance:
                for outcome in pool.send_many(messages):
                    if isinstance(outcome, SMTPError):
                        failed += 1
                        echo(f"failed: {outcome}", file=sys.stderr)
                    else:
                        sent += 1
                    advance()
            elapsed = time.monotonic() - start
            stats = pool.stats()
        received, at_once = len(sink.messages), sink.max_concurrent
    rate = sent / elapsed if elapsed > 0 else float("inf")
    echo(
        f"sent {sent}, failed {failed}, received by sink {received}, {elapsed:.2f} s, "
        f"{rate:.0f} messages/s; {stats['connections_opened']} connections opened over the "
        f"run, at most {at_once} at once (max_connections={args.max_connections}), each "
        f"retired after {pool.options.max_messages} messages (max_messages)"
    )
    return EXIT_OK if failed == 0 and received == sent else EXIT_FAILED


# -- parsing -------------------------------------------------------------------------------

EXAMPLES = """examples:
  smtppool demo                                  a batch into an embedded sink
  smtppool sink --port 2525 --print              a local server that prints what it gets
  smtppool verify --url smtp://mail.example.com:587
  SMTPPOOL_URL=smtp://localhost:2525 smtppool send outbox/ --report fates.json
"""
SEND_EXAMPLES = """examples:
  smtppool send outbox/ --url smtp://localhost:2525
  smtppool send mail.mbox --host smtp.example.com --port 587 --user me --report fates.json
  smtppool send outbox/ --url smtp://localhost:2525 --resume fates.json --report fates.json
  smtppool send *.eml --from app@example.com --to ann@example.org --rate-limit 10

The password for --user comes from $SMTPPOOL_PASSWORD, --password-file or a prompt.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtppool",
        description="Pooled SMTP sending.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = importlib.metadata.version("smtppool")
    parser.add_argument("--version", action="version", version=f"smtppool {version}")
    commands = parser.add_subparsers(dest="command", required=True)

    send = commands.add_parser(
        "send",
        help="send .eml files, directories, Maildirs, mboxes",
        epilog=SEND_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("paths", nargs="+", help=".eml file, directory, Maildir or mbox")
    send.add_argument("--from", dest="sender", help="envelope sender (default: from headers)")
    send.add_argument("--to", action="append", help="envelope recipient (repeatable)")
    send.add_argument("--max-connections", type=_positive_int)
    send.add_argument("--max-messages", type=_positive_int)
    send.add_argument("--rate-limit", type=_positive_int, help="messages per --rate-delta")
    send.add_argument("--rate-delta", type=float, help="seconds (default 1)")
    send.add_argument("--report", help="write every message's fate to this JSON file")
    send.add_argument(
        "--resume", metavar="REPORT", help="skip what this earlier --report says was sent"
    )
    send.add_argument(
        "--via",
        choices=["pool", "celery"],
        default="pool",
        help="celery: enqueue to the smtppool.contrib.celery workers ($SMTPPOOL_BROKER);"
        " they use their own server settings",
    )
    send.add_argument("--chunk-size", type=_positive_int, default=50, help="--via celery")
    send.add_argument(
        "--wait", type=float, default=3600.0, help="--via celery: seconds for every outcome"
    )
    _add_server_arguments(send)
    send.set_defaults(run=_send)

    verify = commands.add_parser("verify", help="check a server configuration")
    _add_server_arguments(verify)
    verify.set_defaults(run=_verify)

    sink = commands.add_parser("sink", help="run a local development SMTP server")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=2525, help="0 picks a free port")
    sink.add_argument("--maildir", help="store each message in this Maildir")
    sink.add_argument("--print", action="store_true", help="print each message")
    sink.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD")
    sink.add_argument("--tls-cert", help="certificate (PEM) to offer STARTTLS with")
    sink.add_argument("--tls-key", help="its private key, if not in --tls-cert")
    sink.add_argument(
        "--extension", action="append", default=[], choices=["PIPELINING", "DSN", "CHUNKING"]
    )
    sink.add_argument("--count", type=_positive_int, help="exit after this many messages")
    sink.set_defaults(run=_sink)

    demo = commands.add_parser("demo", help="send a generated batch to an embedded sink")
    demo.add_argument("--count", type=_positive_int, default=1000, help="default 1000")
    demo.add_argument("--max-connections", type=_positive_int, default=5, help="default 5")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        status: int = args.run(args)
    except UsageError as exc:
        echo(f"usage error: {exc} (see smtppool {args.command} --help)", file=sys.stderr)
        return EXIT_USAGE
    except SMTPError as exc:
        echo(
            f"error {exc.code}: {exc.message}" + (f" ({exc.response})" if exc.response else ""),
            file=sys.stderr,
        )
        if "allow_plaintext_auth" in exc.message:
            echo("on the command line: --secure, or --allow-plaintext-auth", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, TypeError, OSError) as exc:
        echo(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status
