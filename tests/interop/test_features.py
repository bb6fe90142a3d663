"""Each feature against each real server, through SMTPConnection and through SMTPPool.

Every test checks what the server itself recorded: the stored message, byte for byte,
its log, or the report it generated.  Plaintext sessions (allowed to loopback) are
used where the test reads the client's writes on the wire.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from smtppool import DSN, Envelope, SendResult, SMTPConnection, SMTPPool
from smtppool.errors import AuthenticationError, EnvelopeError, MessageError

from .servers import DOMAIN, PASSWORD, USER, Dovecot, MailServer, message_in

VIA = ("connection", "pool")
ALICE, BOB, SENDER = (f"{box}@{DOMAIN}" for box in ("alice", "bob", "sender"))

#: What each server advertises as configured here (AUTH only after STARTTLS).
ADVERTISED = {
    "postfix": {"PIPELINING", "CHUNKING", "8BITMIME", "SMTPUTF8", "DSN", "SIZE",
                "ENHANCEDSTATUSCODES", "STARTTLS", "AUTH PLAIN", "AUTH LOGIN"},
    "smtp-sink": {"PIPELINING", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES"},
    "exim": {"PIPELINING", "PIPECONNECT", "CHUNKING", "8BITMIME", "SMTPUTF8", "DSN", "SIZE",
             "STARTTLS", "AUTH PLAIN", "AUTH LOGIN"},
    "opensmtpd": {"8BITMIME", "DSN", "SIZE", "ENHANCEDSTATUSCODES", "STARTTLS", "AUTH PLAIN",
                  "AUTH LOGIN"},
    "dovecot": {"PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS"},
}  # fmt: skip

#: Where each server says which TLS version a session negotiated: its log, or (Dovecot)
#: the Received header it writes into the stored message.
TLS_EVIDENCE = {
    "postfix": r"TLS connection established from \S+: (TLSv1\.[23])",
    "exim": r"X=TLS(1\.[23]):",
    "opensmtpd": r"smtp tls ciphers=TLS(v1\.[23]):",
    "dovecot": r"\(using (TLSv1\.[23]) with cipher \S+ .*\n\tby \S+ with LMTPS",
}
#: Where each server's log says a client logged in, and with which method (when it says).
AUTH_LOG = {
    "postfix": r"sasl_method=(?P<method>\w+), sasl_username=(?P<user>\w+)",
    "exim": r"A=(?P<method>\w+):(?P<user>\w+)",
    "opensmtpd": r"smtp authentication user=(?P<user>\w+) result=ok",
}


class Recorder:
    """``get_socket`` hook that keeps every write of plaintext sessions, and when each
    read happened between them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reads_before: list[int] = []  # per read: how many writes preceded it

    def __call__(self, options: Any) -> socket.socket:
        plain = socket.create_connection((options.host, options.port), timeout=10)
        sock = _RecordingSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.recorder = self
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def reads_between(self, first: bytes, last: bytes) -> int:
        """How many reads happened after the write carrying ``first`` and before the one
        carrying ``last``: 0 when everything in between left in one flight."""
        start = next(i for i, data in enumerate(self.writes) if first in data)
        end = next(i for i, data in enumerate(self.writes) if last in data)
        return sum(1 for writes in self.reads_before if start < writes <= end)

    def write_with(self, *parts: bytes) -> bytes:
        """The first single write that carries every one of ``parts``."""
        for data in self.writes:
            if all(part in data for part in parts):
                return data
        raise AssertionError(f"no single write carried {parts}: {self.writes!r}")


class _RecordingSocket(socket.socket):
    recorder: Recorder

    def send(self, data: Any, flags: int = 0) -> int:  # what a kernel-timed socket uses
        sent = super().send(data, flags)
        self.recorder.writes.append(bytes(data[:sent]))
        return sent

    def sendall(self, data: Any, flags: int = 0) -> None:  # with Python timeouts
        self.recorder.writes.append(bytes(data))
        super().sendall(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.recorder.reads_before.append(len(self.recorder.writes))
        return data


def make_message(body: bytes, *, sender: str = SENDER, subject: bytes = b"interop") -> bytes:
    """A message with a unique Message-ID (its marker) and CRLF line endings."""
    marker = uuid.uuid4().hex
    head = (
        f"From: {sender}\r\nTo: {ALICE}\r\nMessage-ID: <{marker}@client.interop.test>\r\n"
        f"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\n".encode()
    )
    return head + b"Subject: " + subject + b"\r\n\r\n" + body


def marker_of(message: bytes) -> bytes:
    found = re.search(rb"Message-ID: <(\w+)@", message)
    assert found is not None
    return found[1]


def settings(server: MailServer, *, tls: bool | None = None, **options: Any) -> dict[str, Any]:
    """Client options for ``server``; TLS whenever the server offers it unless told."""
    if tls is None:
        tls = "STARTTLS" in server.advertised
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "lmtp": server.lmtp,
        "name": "client.interop.test",
        "tls": server.tls.client_tls(),
        "require_tls": tls,
        "ignore_tls": not tls,
        "connection_timeout": 20,
        "socket_timeout": 30,
        **options,
    }


def deliver(
    server: MailServer, via: str, message: bytes, envelope: Envelope, **options: Any
) -> SendResult:
    """Send one message through a fresh SMTPConnection or SMTPPool, and close it."""
    config = settings(server, **options)
    if via == "connection":
        conn = SMTPConnection(**config)
        conn.connect()
        try:
            if config.get("auth"):
                conn.login()
            return conn.send(envelope, message)
        finally:
            conn.close()
    with SMTPPool(**config, retries=0) as pool:
        return pool.send(message, envelope)


def deliver_on_the_record(
    server: MailServer, via: str, message: bytes, envelope: Envelope
) -> Recorder:
    """Send in plaintext (allowed to loopback) and return what the client wrote."""
    recorder = Recorder()
    deliver(server, via, message, envelope, tls=False, get_socket=recorder)
    return recorder


def stored_once(server: MailServer, address: str, message: bytes) -> bytes:
    """The single stored copy of ``message``, checked byte for byte."""
    (stored,) = stored_each_once(server, address, [message])
    return stored


def stored_each_once(server: MailServer, address: str, messages: list[bytes]) -> list[bytes]:
    """The stored copy of each message, checking that there is exactly one of each."""
    wanted = {marker_of(message) for message in messages}

    def by_marker(stored: list[bytes]) -> dict[bytes, list[bytes]]:
        found: dict[bytes, list[bytes]] = {}
        for copy in stored:
            marker = re.search(rb"Message-ID: <(\w+)@client\.interop\.test>", copy)
            if marker and marker[1] in wanted:
                found.setdefault(marker[1], []).append(copy)
        return found

    copies = by_marker(server.wait_for(
        address, lambda stored: len(by_marker(stored)) == len(wanted),
        f"{len(wanted)} message(s)", timeout=30 + len(messages) / 20,
    ))  # fmt: skip
    for message in messages:
        matches = copies[marker_of(message)]
        assert len(matches) == 1, f"{len(matches)} copies of {marker_of(message)!r}"
        assert message_in(matches[0], message), matches[0]
    return [copies[marker_of(message)][0] for message in messages]


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.feature("EHLO/LHLO, extensions")
def test_advertises_what_it_is_configured_for(server: MailServer) -> None:
    assert server.advertised == ADVERTISED[server.name]


@pytest.mark.feature("delivery, byte for byte")
@pytest.mark.parametrize("via", VIA)
def test_delivers_content_unchanged(server: MailServer, via: str) -> None:
    body = (
        b"Lines that dot-stuffing must survive:\r\n"
        b".\r\n"
        b"..\r\n"
        b".leading dot\r\n"
        b"..two leading dots\r\n"
        b"\r\n"
        b"trailing spaces and a tab \t \r\n"
        + b"x" * 990 + b"\r\n"
        b"-- \r\n"
        b"last line\r\n"
    )  # fmt: skip
    message = make_message(body)
    result = deliver(server, via, message, Envelope(SENDER, [ALICE, BOB]))
    assert result.accepted == [ALICE, BOB]
    assert result.rejected == []
    for address in (ALICE, BOB) if server.refuses_unknown else (ALICE,):
        stored_once(server, address, message)


@pytest.mark.feature("STARTTLS")
@pytest.mark.parametrize("via", VIA)
def test_starttls(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("STARTTLS")
    message = make_message(b"over TLS\r\n")
    deliver(server, via, message, Envelope(SENDER, [ALICE]), tls=True)
    stored = stored_once(server, ALICE, message).decode(errors="replace")
    pattern = TLS_EVIDENCE[server.name]
    negotiated = re.search(pattern, stored) or server.wait_for_log(pattern)
    assert negotiated[1].endswith(("1.2", "1.3"))


@pytest.mark.feature("AUTH PLAIN and LOGIN")
@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("method", ["PLAIN", "LOGIN"])
def test_auth(server: MailServer, via: str, method: str, offered: Callable[[str], None]) -> None:
    offered(f"AUTH {method}")
    message = make_message(f"authenticated with {method}\r\n".encode())
    server_log_before = len(server.log())
    deliver(
        server, via, message, Envelope(SENDER, [ALICE]),
        tls=True, auth=(USER, PASSWORD), auth_method=method,
    )  # fmt: skip
    stored_once(server, ALICE, message)
    logged = re.search(AUTH_LOG[server.name], server.log()[server_log_before:])
    assert logged is not None, server.log()[server_log_before:]
    assert logged["user"] == USER
    if "method" in logged.groupdict():
        assert logged["method"].upper() == method


@pytest.mark.feature("AUTH, wrong password refused")
@pytest.mark.parametrize("via", VIA)
def test_wrong_password(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("AUTH PLAIN")
    with pytest.raises(AuthenticationError) as failure:
        deliver(
            server, via, make_message(b"never sent\r\n"), Envelope(SENDER, [ALICE]),
            tls=True, auth=(USER, "wrong"),
        )  # fmt: skip
    assert failure.value.response_code == 535
    assert PASSWORD not in str(failure.value)


@pytest.mark.feature("PIPELINING")
@pytest.mark.parametrize("via", VIA)
def test_pipelining(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("PIPELINING")
    message = make_message(b"pipelined\r\n")
    recorder = deliver_on_the_record(server, via, message, Envelope(SENDER, [ALICE, BOB]))
    flight = recorder.write_with(b"MAIL FROM:", b"RCPT TO:<alice", b"RCPT TO:<bob")
    assert b"DATA\r\n" in flight or b"BDAT " in flight
    stored_once(server, ALICE, message)
    if server.name == "exim":  # Exim logs "L" on a message received with pipelining
        server.wait_for_log(r"<= sender@example\.test .* L[.-] ")


@pytest.mark.feature("CHUNKING (BDAT)")
@pytest.mark.parametrize("via", VIA)
def test_chunking(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("CHUNKING")
    lines = b"".join(b"line %06d .dot stuffing is not used with BDAT\r\n" % i for i in range(4000))
    message = make_message(b".\r\n" + lines)  # about 200 KB: several chunks
    recorder = deliver_on_the_record(server, via, message, Envelope(SENDER, [ALICE]))
    bdats = [w for w in recorder.writes if w.startswith(b"BDAT ") or b"\r\nBDAT " in w]
    assert len(bdats) >= 2 and any(b" LAST\r\n" in w for w in bdats)
    # SMTP: MAIL, RCPT and every chunk, LAST included, leave before any reply is read;
    # LMTP hears the chunks before LAST.
    heard = recorder.reads_between(b"MAIL FROM:", b" LAST\r\n")
    assert heard > 0 if server.lmtp else heard == 0
    assert not any(b"DATA\r\n" in w for w in recorder.writes)
    stored_once(server, ALICE, message)
    if server.name == "postfix":
        server.wait_for_log(r"disconnect from \S+ ehlo=1 mail=1 rcpt=1 bdat=[2-9]")
    elif server.name == "exim":  # "K": received with CHUNKING
        server.wait_for_log(r"<= sender@example\.test .* K S=")


@pytest.mark.feature("8BITMIME")
@pytest.mark.parametrize("via", VIA)
def test_8bitmime(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("8BITMIME")
    body = "Grüße, naïve café — ☃\r\n".encode() + b"latin-1 \xe9t\xe9\r\n"
    message = make_message(body)
    recorder = deliver_on_the_record(server, via, message, Envelope(SENDER, [ALICE]))
    assert b"BODY=8BITMIME" in recorder.write_with(b"MAIL FROM:")
    stored_once(server, ALICE, message)


@pytest.mark.feature("SMTPUTF8")
@pytest.mark.parametrize("via", VIA)
def test_smtputf8(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("SMTPUTF8")
    sender = f"jörg@{DOMAIN}"
    message = make_message("Ünïcödé body ✉\r\n".encode(), sender=sender,
                           subject="Grüße ✉".encode())  # fmt: skip
    recorder = deliver_on_the_record(server, via, message, Envelope(sender, [ALICE]))
    mail = recorder.write_with(b"MAIL FROM:")
    assert f"MAIL FROM:<{sender}>".encode() in mail and b"SMTPUTF8" in mail
    stored = stored_once(server, ALICE, message)
    assert f"<{sender}>".encode() in stored.split(b"\n\n")[0]  # the Return-Path


@pytest.mark.feature("SMTPUTF8, refused when not offered")
def test_utf8_address_refused_without_smtputf8(server: MailServer) -> None:
    if "SMTPUTF8" in server.advertised:
        pytest.skip(f"n/a: {server.name} offers SMTPUTF8")
    recorder = Recorder()
    with pytest.raises(EnvelopeError, match="SMTPUTF8"):
        deliver(server, "connection", make_message(b"x\r\n"), Envelope(f"jörg@{DOMAIN}", [ALICE]),
                tls=False, get_socket=recorder)  # fmt: skip
    assert not any(b"MAIL FROM" in w for w in recorder.writes)


@pytest.mark.feature("DSN")
@pytest.mark.parametrize("via", VIA)
def test_dsn(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("DSN")
    envid = "interop-" + uuid.uuid4().hex
    dsn = DSN(ret="HDRS", envid=envid, notify=["SUCCESS", "FAILURE"], orcpt=f"rfc822;{ALICE}")
    message = make_message(b"tell me when it is delivered\r\n")
    recorder = deliver_on_the_record(server, via, message, Envelope(SENDER, [ALICE], dsn=dsn))
    assert f"RET=HDRS ENVID={envid}".encode() in recorder.write_with(b"MAIL FROM:")
    assert b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test" in recorder.write_with(
        b"RCPT TO:"
    )
    stored = stored_once(server, ALICE, message)
    if server.name == "smtp-sink":  # it records the parameters instead of acting on them
        assert f"X-Mail-Args: <{SENDER}> RET=HDRS ENVID={envid}".encode() in stored
        assert b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test" in stored
        return
    # The server acts on NOTIFY=SUCCESS: a delivery report reaches the sender,
    # quoting our ENVID (Postfix, Exim) or our headers (RET=HDRS).
    quoted = marker_of(message) if server.name == "opensmtpd" else envid.encode()
    reports = server.wait_for(
        SENDER, lambda stored: any(quoted in report for report in stored), "a delivery report"
    )
    (report,) = [report for report in reports if quoted in report]
    assert re.search(rb"(?i)delivery", report)


@pytest.mark.feature("SIZE")
@pytest.mark.parametrize("via", VIA)
def test_size(server: MailServer, via: str, offered: Callable[[str], None]) -> None:
    offered("SIZE")
    message = make_message(b"sized\r\n")
    recorder = deliver_on_the_record(server, via, message, Envelope(SENDER, [ALICE]))
    announced = re.search(rb"SIZE=(\d+)", recorder.write_with(b"MAIL FROM:"))
    assert announced is not None and int(announced[1]) >= len(message)
    stored_once(server, ALICE, message)
    # Larger than the server's limit: refused before a byte of it is sent.
    limit = server.size_limit
    recorder.writes.clear()
    with pytest.raises(MessageError, match=f"at most {limit}"):
        deliver(server, via, message, Envelope(SENDER, [ALICE], size=limit + 1), tls=False,
                get_socket=recorder)  # fmt: skip
    assert not any(b"MAIL FROM" in w for w in recorder.writes)


@pytest.mark.feature("refused recipient reported")
@pytest.mark.parametrize("via", VIA)
def test_refused_recipient(server: MailServer, via: str) -> None:
    if not server.refuses_unknown:
        pytest.skip(f"n/a: {server.name} accepts every recipient")
    message = make_message(b"one of two\r\n")
    result = deliver(server, via, message, Envelope(SENDER, [f"nobody@{DOMAIN}", ALICE]))
    assert result.accepted == [ALICE]
    assert result.rejected == [f"nobody@{DOMAIN}"]
    (error,) = result.rejected_errors
    assert error.response_code is not None and 500 <= error.response_code < 600
    if "ENHANCEDSTATUSCODES" in server.advertised:
        assert re.match(r"5\d\d 5\.\d{1,3}\.\d{1,3} ", error.response or ""), error.response
        assert re.match(r"250 2\.\d{1,3}\.\d{1,3} ", result.response), result.response
    stored_once(server, ALICE, message)


@pytest.mark.feature("LMTP, a reply per recipient")
@pytest.mark.parametrize("via", VIA)
def test_lmtp_reply_per_recipient(server: MailServer, via: str) -> None:
    if not isinstance(server, Dovecot):
        pytest.skip(f"n/a: {server.name} speaks SMTP, not LMTP")
    full = f"{Dovecot.FULL}@{DOMAIN}"
    message = make_message(b"more than a kilobyte\r\n" * 100)
    result = deliver(server, via, message, Envelope(SENDER, [ALICE, full]))
    assert result.accepted == [ALICE]
    assert result.rejected == [full]
    assert (result.rejected_errors[0].response or "").startswith("552 5.2.2 ")
    stored_once(server, ALICE, message)
    assert server.stored(full) == []


@pytest.mark.feature("pool, 60 messages exactly once")
def test_pool_batch_exactly_once(server: MailServer) -> None:
    messages = [make_message(f"batch message {i}\r\n".encode()) for i in range(60)]
    with SMTPPool(**settings(server), max_connections=3, max_messages=7) as pool:
        outcomes = list(pool.send_many((m, Envelope(SENDER, [ALICE])) for m in messages))
        stats = pool.stats()
    assert all(isinstance(outcome, SendResult) for outcome in outcomes), outcomes
    assert stats["sent"] == 60
    assert stats["connections_opened"] >= 60 // 7  # max_messages retired connections
    stored_each_once(server, ALICE, messages)
