"""The development sink's own lifecycle."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from smtppool import AuthenticationError, Envelope, SMTPConnection, SMTPPool
from smtppool.sink import Sink
from smtppool.testing import CapturedMessage


def test_stop_closes_connections_accepted_while_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections the loop accepts in the same turn as the shutdown starts become
    transports in tasks of their own; run after the server closed (or cancelled before
    they ran) they used to leave their sockets open."""
    leaks: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: leaks.append(repr(u.exc_value)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # raised in __del__: unraisable
        for _ in range(5):
            sink = Sink().start()
            loop: Any = sink._loop
            held = threading.Event()
            loop.call_soon_threadsafe(held.wait, 5)  # the loop is busy...
            clients = [socket.create_connection((sink.host, sink.port)) for _ in range(4)]
            stopper = threading.Thread(target=sink.stop)  # ...while stop() queues behind it
            stopper.start()
            time.sleep(0.1)
            held.set()  # now the accepts and the shutdown run in the same turns
            stopper.join(10)
            for client in clients:
                client.close()
            gc.collect()
    assert leaks == []


# -- as a new user meets it --------------------------------------------------------------


def test_a_login_over_plaintext_loopback_is_checked(smtpd: Callable[..., Sink]) -> None:
    """A sink with credentials used to offer no AUTH without TLS (aiosmtpd's default),
    so the README's example failed with "SMTP AUTH extension not supported"; and it
    advertised a mechanism "ATTEMPTS" taken from an attribute's name."""
    sink = smtpd(credentials={"u": "pw"})
    with SMTPConnection(host=sink.host, port=sink.port, auth=("u", "pw")) as conn:
        assert conn.extensions.auth_mechanisms == {"PLAIN", "LOGIN", "CRAM-MD5"}
        conn.send(Envelope("a@x.org", "b@x.org"), b"hi\r\n")
    wrong = SMTPConnection(host=sink.host, port=sink.port, auth=("u", "nope"))
    with pytest.raises(AuthenticationError, match="535"):
        wrong.connect()
        wrong.login()
    wrong.close()
    assert sink.login_attempts == [("CRAM-MD5", "u", True), ("CRAM-MD5", "u", False)]
    assert [m.login for m in sink.messages] == ["u"]


def test_no_deprecation_warning_after_a_login(
    smtpd: Callable[..., Sink], caplog: pytest.LogCaptureFixture
) -> None:
    sink = smtpd(credentials={"u": "pw"})
    with SMTPConnection(host=sink.host, port=sink.port, auth=("u", "pw"), auth_method="PLAIN"):
        pass
    assert sink.login_attempts == [("PLAIN", "u", True)]
    assert "deprecated" not in caplog.text


def test_a_tls_sink_works_with_require_tls(
    smtpd: Callable[..., Sink], client_tls: dict[str, Any]
) -> None:
    sink = smtpd(tls="starttls", credentials={"u": "pw"})
    with SMTPConnection(
        host="localhost", port=sink.port, tls=client_tls, require_tls=True, auth=("u", "pw")
    ) as conn:
        assert conn.tls_mode == "STARTTLS"
        conn.send(Envelope("a@x.org", "b@x.org"), b"hi\r\n")
    assert len(sink.messages) == 1


@pytest.mark.parametrize("option", ["tls", "credential", "max_message_size"])
def test_an_unknown_option_is_a_type_error(option: str) -> None:
    """``tls=True`` used to give a sink that dropped every connection."""
    with pytest.raises(TypeError, match=f"unknown Sink option.*{option}.*tls_context"):
        Sink(**{option: True})


def test_messages_have_an_envelope_as_the_plugins_do(smtpd: Callable[..., Sink]) -> None:
    sink = smtpd()
    with SMTPConnection(host=sink.host, port=sink.port) as conn:
        conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"Subject: s\r\n\r\nhi\r\n")
    [received] = sink.messages
    captured = CapturedMessage.from_received(received)
    assert received.envelope == captured.envelope == Envelope("a@x.org", ["b@x.org", "c@x.org"])
    assert (captured.mail_from, captured.rcpt_tos) == ("a@x.org", ("b@x.org", "c@x.org"))


def test_connections_beyond_max_connections_are_refused_with_421(
    smtpd: Callable[..., Sink],
) -> None:
    sink = smtpd(max_connections=3)
    held = [socket.create_connection((sink.host, sink.port), timeout=5) for _ in range(3)]
    try:
        for sock in held:
            assert sock.recv(100).startswith(b"220")
        with socket.create_connection((sink.host, sink.port), timeout=5) as extra:
            assert extra.recv(100).startswith(b"421 4.7.0")
            assert extra.recv(100) == b""  # and closed
        assert sink.connections_refused == 1 and sink.active_connections == 3
    finally:
        for sock in held:
            sock.close()


def bdat(sock: socket.socket, header: bytes, size: int) -> None:
    """Send a BDAT command and ``size`` bytes of content in 1 MiB pieces."""
    sock.sendall(header)
    piece = b"x" * (1 << 20)
    while size > 0:
        sock.sendall(piece[: min(size, len(piece))])
        size -= min(size, len(piece))


def replies(reader: Any, count: int) -> list[bytes]:
    """The next ``count`` replies' final lines (multi-line replies read whole)."""
    finals = []
    while len(finals) < count:
        line = reader.readline()
        assert line, finals
        if line[3:4] != b"-":
            finals.append(line.rstrip())
    return finals


def test_a_bdat_chunk_before_mail_or_over_the_limit_is_refused_and_dropped(
    smtpd: Callable[..., Sink],
) -> None:
    """The chunk was read into memory before the checks; both refusals now come after
    reading it in small pieces, and the session stays in step."""
    sink = smtpd(extensions=["CHUNKING"], data_size_limit=1000)
    with socket.create_connection((sink.host, sink.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"EHLO c\r\n")
        assert [r[:3] for r in replies(reader, 2)] == [b"220", b"250"]
        bdat(sock, b"BDAT 5000 LAST\r\n", 5000)
        sock.sendall(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n")
        bdat(sock, b"BDAT 5000 LAST\r\n", 5000)
        sock.sendall(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nBDAT 2 LAST\r\nok")
        got = replies(reader, 7)
    codes = [line[:3] for line in got]
    assert codes == [b"503", b"250", b"250", b"552", b"250", b"250", b"250"], got
    assert [m.data for m in sink.messages] == [b"ok"]


@contextmanager
def sink_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``smtppool sink`` in a process of its own (its memory measured alone)."""
    command = [sys.executable, "-m", "smtppool", "sink", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield process, int(line.rsplit(":", 1)[1])
    finally:
        process.kill()
        process.communicate(timeout=30)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_refusing_a_400_mb_bdat_keeps_the_sink_small() -> None:
    """One ``BDAT 419430400 LAST`` grew the sink from 62 to 857 MiB before its 552."""
    with sink_process("--extension", "CHUNKING") as (process, port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\n")
            assert [r[:3] for r in replies(reader, 4)] == [b"220", b"250", b"250", b"250"]
            bdat(sock, b"BDAT 419430400 LAST\r\n", 419430400)
            assert replies(reader, 1)[0].startswith(b"552")
        peak = peak_rss_mib(process.pid)
    assert peak < 100, f"{peak:.0f} MiB"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_maildir_sink_keeps_no_message_in_memory(tmp_path: Path) -> None:
    """Every message stayed in memory even with --maildir (2,000 x 100 KB: 26 -> 221 MiB)."""
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 100
    with sink_process("--maildir", str(tmp_path / "md"), "--extension", "PIPELINING") as (
        process,
        port,
    ):
        with SMTPPool(host="127.0.0.1", port=port, max_connections=4) as pool:
            outcomes = list(
                pool.send_many((body, Envelope("a@x.org", "b@x.org")) for _ in range(2000))
            )
        assert all(not isinstance(o, Exception) for o in outcomes)
        peak = peak_rss_mib(process.pid)
    assert len(list((tmp_path / "md" / "new").iterdir())) == 2000
    assert peak < 100, f"{peak:.0f} MiB"
