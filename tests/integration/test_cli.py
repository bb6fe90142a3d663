"""The command line: the real console script in subprocesses, and main() in-process."""

from __future__ import annotations

import json
import mailbox
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import smtppool
from smtppool import Envelope, SMTPConnection
from smtppool.batch import BatchReport, Outcome, iter_items
from smtppool.cli import main
from smtppool.console import plain_progress, print_summary, printable
from smtppool.sink import Sink

from ..faults import Faults, FaultServer
from ..servers import ScriptedServer, expect, send, wait_until

SinkFactory = Callable[..., Sink]
SCRIPT = shutil.which("smtppool", path=str(Path(sys.executable).parent)) or "smtppool"


def run(
    *args: str, timeout: float = 120, password: str | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPPOOL_")}
    if password is not None:
        env["SMTPPOOL_PASSWORD"] = password
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        **kwargs,
    )


def eml(index: int, to: str | None = None) -> bytes:
    return (
        f"From: app@x.org\r\nTo: {to or f'u{index}@x.org'}\r\nSubject: batch {index}\r\n"
        f"Message-ID: <b{index}@x.org>\r\n\r\nMessage {index}\r\n.\r\nafter a dot\r\n"
    ).encode()


def write_outbox(directory: Path, count: int) -> Path:
    """``directory`` filled with ``count`` numbered .eml files (in their sort order)."""
    directory.mkdir()
    for i in range(count):
        (directory / f"{i:03}.eml").write_bytes(eml(i))
    return directory


def test_send_a_directory_with_a_report(smtpd: SinkFactory, tmp_path: Path) -> None:
    sink = smtpd(reject_recipients=["nobody@x.org"])
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    for i in range(300):
        (outbox / f"{i:03}.eml").write_bytes(eml(i, "nobody@x.org" if i == 123 else None))
    report_path = tmp_path / "report.json"
    result = run(
        "send",
        str(outbox),
        "--url",
        sink.url,
        "--max-connections",
        "3",
        "--report",
        str(report_path),
    )
    assert result.returncode == 1, result.stderr  # one message failed
    report = json.loads(report_path.read_text())
    assert (report["sent"], report["failed"], report["not_sent"]) == (299, 1, 0)
    by_id = {entry["id"]: entry for entry in report["messages"]}
    assert sorted(by_id) == sorted(str(outbox / f"{i:03}.eml") for i in range(300))
    for i in range(300):
        entry = by_id[str(outbox / f"{i:03}.eml")]
        if i == 123:
            assert entry["status"] == "failed" and entry["error"]["code"] == "EENVELOPE"
            assert entry["error"]["response"].startswith("550 5.1.1")
        else:
            assert entry["status"] == "sent" and entry["accepted"] == [f"u{i}@x.org"]
            assert entry["response"].startswith("250 ")
    assert len(sink.messages) == 299 and sink.max_concurrent <= 3
    assert "sent" in result.stdout and "299" in result.stdout
    assert "failed x1: EENVELOPE" in result.stderr and "123.eml" in result.stderr


def test_send_with_an_explicit_envelope(smtpd: SinkFactory, tmp_path: Path) -> None:
    sink = smtpd()
    path = tmp_path / "one.eml"
    path.write_bytes(eml(1))
    result = run(
        "send",
        str(path),
        "--url",
        sink.url,
        "--from",
        "bounce@x.org",
        "--to",
        "r1@x.org",
        "--to",
        "r2@x.org",
    )
    assert result.returncode == 0, result.stderr
    [received] = sink.messages
    assert received.mail_from == "bounce@x.org" and received.rcpt_tos == ("r1@x.org", "r2@x.org")


def test_ctrl_c_stops_cleanly_and_accounts_for_every_message(
    smtpd: SinkFactory, tmp_path: Path
) -> None:
    sink = smtpd()
    outbox = write_outbox(tmp_path / "slow", 100)
    report_path = tmp_path / "report.json"
    process = subprocess.Popen(
        [
            SCRIPT,
            "send",
            str(outbox),
            "--url",
            sink.url,
            "--rate-limit",
            "10",
            "--report",
            str(report_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: len(sink.messages) >= 15, 20)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    report = json.loads(report_path.read_text())
    statuses = [entry["status"] for entry in report["messages"]]
    assert report["interrupted"] and len(statuses) == 100
    assert set(statuses) <= {"sent", "not sent"}  # nothing left unknown
    assert statuses.count("sent") == len(sink.messages) < 100
    # A summary, not a line per message (80 "not sent ... interrupted" lines after 20).
    assert len(err.splitlines()) <= 20 and "not sent x" in err, err
    # --resume sends only the rest: the sink gets each message once in all.
    resumed = run(
        "send", str(outbox), "--url", sink.url, "--resume", str(report_path),
        "--report", str(report_path),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping {statuses.count('sent')} message(s) already sent" in resumed.stdout
    assert sorted(m.envelope.rcpt_to[0] for m in sink.messages) == sorted(
        f"u{i}@x.org" for i in range(100)
    )
    final = json.loads(report_path.read_text())
    assert [e["status"] for e in final["messages"]].count("sent") == 100


def test_identical_failures_are_summarised_with_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """50 messages to a closed port printed 50 identical connection errors."""
    outbox = write_outbox(tmp_path / "outbox", 50)
    url = f"smtp://127.0.0.1:{_closed_port()}/?pool_timeout=0.5"
    assert main(["send", str(outbox), "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.count("failed x50: ECONNECTION") == 1 and "and 47 more" in err, err
    assert len(err.splitlines()) <= 4 and "--report FILE" in err


def test_usage_errors_exit_2_with_a_usage_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no server at all, send went to localhost:25 and printed a connection error
    per message; usage errors exited 1 though the README says 2."""
    monkeypatch.delenv("SMTPPOOL_URL", raising=False)
    (tmp_path / "a.eml").write_bytes(eml(1))
    assert main(["send", str(tmp_path)]) == 2
    assert "usage error: no server: give --url, --host or --service" in capsys.readouterr().err
    assert main(["send", str(tmp_path), "--url", "smtp://h/?max_connections=many"]) == 2
    assert "usage error: " in capsys.readouterr().err
    assert main(["send", str(tmp_path), "--url", "smtp://h/", "--resume", "missing.json"]) == 2
    assert "cannot resume from missing.json" in capsys.readouterr().err


def test_version_and_examples_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"smtppool {smtppool.__version__}"
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    assert main(["send", "--help"]) == 0
    assert "--resume fates.json" in capsys.readouterr().out


@pytest.fixture
def tls_sink(smtpd: SinkFactory, ca: trustme.CA, tmp_path: Path) -> tuple[Sink, Path]:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return smtpd(tls="starttls", credentials={"u": "pw"}), cafile


def verify_args(port: int, cafile: Path | None) -> list[str]:
    args = [
        "verify",
        "--host",
        "localhost",
        "--port",
        str(port),
        "--user",
        "u",
    ]
    return args + (["--cafile", str(cafile)] if cafile else [])


def test_verify_prints_what_the_server_offers(tls_sink: tuple[Sink, Path]) -> None:
    sink, cafile = tls_sink
    result = run(*verify_args(sink.port, cafile), password="pw")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TLSv1.3 (STARTTLS)" in out and "SMTPUTF8" in out and "SIZE=33554432" in out
    assert "CRAM-MD5 LOGIN PLAIN" in out and "ok as u" in out and "result      OK" in out


@pytest.mark.parametrize("case", ["password", "certificate", "closed port"])
def test_verify_failures(tls_sink: tuple[Sink, Path], case: str) -> None:
    sink, cafile = tls_sink
    port = _closed_port() if case == "closed port" else sink.port
    args = verify_args(port, None if case == "certificate" else cafile)
    result = run(*args, timeout=60, password="wrong" if case == "password" else "pw")
    assert result.returncode == 1 and result.stdout == ""
    expected = {
        "password": "error EAUTH: AUTH CRAM-MD5 failed (535",
        "certificate": "error ETLS: localhost:{port} (tried ",  # the addresses, then why
        "closed port": "error ECONNECTION: localhost:{port}",
    }
    assert result.stderr.startswith(expected[case].format(port=port)), result.stderr
    assert case != "certificate" or "TLS failure in STARTTLS" in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sink_command_writes_a_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    process = subprocess.Popen(
        [
            SCRIPT,
            "sink",
            "--port",
            "0",
            "--maildir",
            str(maildir),
            "--count",
            "1",
            "--extension",
            "PIPELINING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + process.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        with SMTPConnection(host="127.0.0.1", port=port) as conn:
            assert "PIPELINING" in conn.extensions
            conn.send(Envelope("a@x.org", "b@x.org"), eml(7))
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill() if process.poll() is None else None
    assert process.returncode == 0 and "received 1 message(s)" in out
    [stored] = list(mailbox.Maildir(maildir, create=False))
    assert stored["Subject"] == "batch 7" and stored["Return-Path"] == "<a@x.org>"


def test_mbox_and_maildir_sources(smtpd: SinkFactory, tmp_path: Path) -> None:
    box = mailbox.mbox(tmp_path / "archive.mbox")
    for i in range(3):
        box.add(eml(i))
    box.close()
    maildir = mailbox.Maildir(tmp_path / "md", create=True)
    for i in range(3, 5):
        maildir.add(eml(i))
    ids = [item.id for item in iter_items([tmp_path / "archive.mbox", tmp_path / "md"])]
    assert len(ids) == 5 and ids[0].startswith(str(tmp_path / "archive.mbox") + "#")
    sink = smtpd()
    assert (
        main(["send", str(tmp_path / "archive.mbox"), str(tmp_path / "md"), "--url", sink.url]) == 0
    )
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [f"u{i}@x.org" for i in range(5)]


def test_missing_path_and_server_from_environment(
    smtpd: SinkFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["send", str(tmp_path / "nope.eml"), "--url", "smtp://127.0.0.1:1"]) == 2
    assert "usage error: no such file or directory" in capsys.readouterr().err
    sink = smtpd()
    path = tmp_path / "m.eml"
    path.write_bytes(eml(1))
    monkeypatch.setenv("SMTPPOOL_URL", sink.url)
    assert main(["send", str(path)]) == 0 and len(sink.messages) == 1


@pytest.mark.timeout(30, method="thread")  # a regression spins where SIGALRM cannot stop it
def test_a_message_that_times_out_is_reported_not_waited_for_forever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On Python 3.11+ an SMTPTimeoutError outcome is also the TimeoutError of a timed
    future.result(): the batch runner took it for "not done yet" and polled forever."""
    path = tmp_path / "m.eml"
    path.write_bytes(eml(1))
    report = tmp_path / "report.json"
    with FaultServer(Faults(stall=10)) as server:  # the message is never answered
        url = f"smtp://127.0.0.1:{server.port}/?socket_timeout=0.5&retries=0"
        started = time.monotonic()
        assert main(["send", str(path), "--url", url, "--report", str(report)]) == 1
        assert time.monotonic() - started < 5
    [entry] = json.loads(report.read_text())["messages"]
    assert entry["status"] == "failed" and entry["error"]["code"] == "ETIMEDOUT"
    assert entry["error"]["delivery_unknown"] is True
    capsys.readouterr()


def test_demo_sends_a_batch_into_the_embedded_sink(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "60", "--max-connections", "3"]) == 0
    out = capsys.readouterr().out
    assert "sink listening on 127.0.0.1:" in out
    assert "sent 60, failed 0, received by sink 60" in out
    assert "3 connections opened over the run, at most 3 at once (max_connections=3)" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["demo", "--count", "0"]) == 2
    assert main(["demo", "--count", "many"]) == 2
    assert main(["demo", "--max-connections", "0"]) == 2
    assert main(["send"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_demo_runs_as_a_newcomer_would() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "smtppool", "demo", "--count", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 200, failed 0, received by sink 200" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    assert time.monotonic() - started < 120


#: A window-title change, a screen clear, a one-byte CSI and a right-to-left override.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


@pytest.mark.parametrize("reply", ["250", "550"], ids=["verified", "refused"])
def test_server_text_is_shown_escaped_never_obeyed(
    scripted: Callable[..., ScriptedServer], capsys: pytest.CaptureFixture[str], reply: str
) -> None:
    """`smtppool verify` printed the server's EHLO text as is: a server could retitle
    the window and clear the screen."""
    ehlo = f"250-fake.example\r\n250-XTITLE {ESCAPES}\r\n250 SIZE 1000\r\n".encode()
    refused = f"550 5.7.1 go away {ESCAPES}\r\n".encode()
    server = scripted(
        [send(b"220 fake " + ESCAPES.encode() + b"\r\n"), expect(b"EHLO"), send(ehlo)]
        if reply == "250"
        else [send(refused)]
    )
    status = main(["verify", "--host", server.host, "--port", str(server.port), "--timeout", "5"])
    output = capsys.readouterr()
    shown = output.out + output.err
    assert status == (0 if reply == "250" else 1)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202e" in shown, shown
    assert not any(c in shown for c in "\x1b\x07\x9b\u202e")


def test_printable_keeps_text_and_line_breaks() -> None:
    assert printable("héllo\tworld\r\nnext\n") == "héllo\tworld\nnext\n"
    assert printable("a\rb\x00c\x7f") == "a\\rb\\x00c\\x7f"
    assert printable("x\u200ey\u2028z") == "x\\u200ey\\u2028z"  # a mark, a line separator


def login_args(sink: Sink, cafile: Path, *extra: str) -> list[str]:
    return [
        "verify",
        "--host",
        "localhost",
        "--port",
        str(sink.port),
        "--cafile",
        str(cafile),
        *extra,
    ]


def test_a_password_on_the_command_line_is_warned_about(
    tls_sink: tuple[Sink, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sink, cafile = tls_sink
    assert main(login_args(sink, cafile, "--user", "u", "--password", "pw")) == 0
    err = capsys.readouterr().err
    assert "warning: the password in --password shows in ps" in err
    url = f"smtp://u:pw@localhost:{sink.port}/"
    assert main(["verify", "--url", url, "--cafile", str(cafile)]) == 0
    assert "warning: the password in --url shows in ps" in capsys.readouterr().err


def test_a_password_from_a_file_the_environment_or_the_terminal(
    tls_sink: tuple[Sink, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, cafile = tls_sink
    (tmp_path / "secret").write_text("pw\n")
    assert (
        main(login_args(sink, cafile, "--user", "u", "--password-file", str(tmp_path / "secret")))
        == 0
    )
    monkeypatch.setenv("SMTPPOOL_PASSWORD", "pw")
    assert main(login_args(sink, cafile, "--user", "u")) == 0
    monkeypatch.delenv("SMTPPOOL_PASSWORD")
    prompts: list[str] = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "pw")
    assert main(login_args(sink, cafile, "--user", "u")) == 0
    assert prompts == ["password for u: "]
    out, err = capsys.readouterr()
    assert out.count("ok as u") == 3 and "warning" not in err
    assert sink.login_attempts[-3:] == [("CRAM-MD5", "u", True)] * 3


def test_no_password_and_no_terminal_is_an_error_not_an_empty_password(
    tls_sink: tuple[Sink, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, cafile = tls_sink
    monkeypatch.delenv("SMTPPOOL_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(login_args(sink, cafile, "--user", "u")) == 2  # a usage error
    assert (
        "no password for u: set $SMTPPOOL_PASSWORD or use --password-file"
        in capsys.readouterr().err
    )
    assert sink.login_attempts == []


def test_help_tells_where_a_password_can_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "$SMTPPOOL_PASSWORD" in text and "--password-file" in text and "shows in ps" in text


def test_a_user_in_the_url_gets_its_password_like_one_from_user(
    tls_sink: tuple[Sink, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--url smtp://u@host`` logged in with an empty password, whatever
    $SMTPPOOL_PASSWORD said; a --password without any user was dropped in silence."""
    sink, cafile = tls_sink
    url = f"smtp://u@localhost:{sink.port}/"
    monkeypatch.setenv("SMTPPOOL_PASSWORD", "pw")
    assert main(["verify", "--url", url, "--cafile", str(cafile)]) == 0
    assert sink.login_attempts[-1] == ("CRAM-MD5", "u", True)
    monkeypatch.delenv("SMTPPOOL_PASSWORD")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["verify", "--url", url, "--cafile", str(cafile)]) == 2
    assert "no password for u" in capsys.readouterr().err
    args = ["verify", "--host", "localhost", "--port", str(sink.port), "--password", "pw"]
    assert main(args) == 2
    assert "a password needs a user" in capsys.readouterr().err
    both = [*args[:-2], "--user", "u", "--password", "pw", "--password-file", "f"]
    assert main(both) == 2  # argparse: not allowed together
    assert "not allowed with argument" in capsys.readouterr().err


def test_resume_matches_ids_and_content_and_refuses_a_report_that_matches_nothing(
    smtpd: SinkFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = smtpd()
    outbox = write_outbox(tmp_path / "outbox", 3)
    report = tmp_path / "fates.json"
    assert main(["send", str(outbox), "--url", sink.url, "--report", str(report)]) == 0
    (outbox / "001.eml").write_bytes(eml(1, to="changed@x.org"))  # edited since: not the same
    args = ["send", str(outbox), "--url", sink.url, "--resume", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "skipping 2 message(s) already sent" in out
        and "1 sent then are not here or have changed" in out
    )
    assert [m.rcpt_tos for m in sink.messages][3:] == [("changed@x.org",)]
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "000.eml").write_bytes(eml(0))
    assert main(["send", str(other), "--url", sink.url, "--resume", str(report)]) == 2
    assert "none of the 3 message(s)" in capsys.readouterr().err
    assert len(sink.messages) == 4  # nothing sent twice by mistake


def test_failures_differing_in_their_reply_code_are_kept_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failed(index: int, response: str) -> Outcome:
        error = {
            "code": "EENVELOPE",
            "message": "every recipient was refused",
            "response": response,
        }
        return Outcome(f"m{index}", "failed", response=response, error=error)

    report = BatchReport(
        [failed(1, "550 5.1.1 no"), failed(2, "450 4.1.1 later"), failed(3, "550 5.1.1 no")]
    )
    print_summary(report, None)
    err = capsys.readouterr().err
    assert "failed x2: EENVELOPE: every recipient was refused (550 5.1.1 no)" in err
    assert "failed x1: EENVELOPE: every recipient was refused (450 4.1.1 later)" in err


def test_a_stopped_plain_progress_bar_ends_where_the_batch_did(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = plain_progress(100, "sending")
    advance = next(progress)
    for _ in range(5):
        advance()
    with pytest.raises(StopIteration):
        next(progress)
    err = capsys.readouterr().err
    assert "5/100" in err and err.endswith("\n") and "100/100" not in err
