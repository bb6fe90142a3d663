"""SMTPConnection against a real aiosmtpd server on loopback: transactions and extensions."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtppool import (
    DSN,
    ConnectError,
    Envelope,
    EnvelopeError,
    MessageError,
    SMTPConnection,
)
from smtppool.protocol import State
from smtppool.sink import Sink

SinkFactory = Callable[..., Sink]


def connect(sink: Sink, **options: object) -> SMTPConnection:
    conn = SMTPConnection(host=sink.host, port=sink.port, **options)  # type: ignore[arg-type]
    conn.connect()
    return conn


def test_plaintext_send_and_result(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with SMTPConnection(host="127.0.0.1", port=sink.port, name="client.example") as conn:
        assert not conn.secure and conn.state is State.READY
        assert "SMTPUTF8" in conn.extensions and conn.extensions.size == 33554432
        result = conn.send(
            Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"Subject: hi\r\n\r\nbody\r\n"
        )
        assert "READY messages=1/100" in repr(conn)
    assert result.accepted == ["b@x.org", "c@x.org"] and result.rejected == []
    assert result.response.startswith("250 2.0.0 OK: queued as ")
    assert result.envelope.mail_from == "a@x.org"
    [received] = sink.messages
    assert received.mail_from == "a@x.org" and received.rcpt_tos == ("b@x.org", "c@x.org")
    assert received.data == b"Subject: hi\r\n\r\nbody\r\n"
    assert "SIZE=21" in received.mail_options


def test_many_messages_on_one_connection(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with connect(sink) as conn:
        for i in range(20):
            conn.send({"from": "a@x.org", "to": f"r{i}@x.org"}, f"Subject: {i}\r\n\r\n{i}\r\n")
        assert conn.messages_sent == 20
    assert len(sink.messages) == 20 and sink.connections_opened == 1
    assert {m.connection for m in sink.messages} == {1}


def test_email_message_bcc_is_delivered_but_not_transmitted(smtpd: SinkFactory) -> None:
    sink = smtpd()
    message = EmailMessage()
    message["From"] = "a@x.org"
    message["To"] = "b@x.org"
    message["Bcc"] = "secret@x.org"
    message["Subject"] = "Grüße"
    message.set_content("Hällo\n.\nnext line\n")
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", ["b@x.org", "secret@x.org"]), message)
    [received] = sink.messages
    assert received.rcpt_tos == ("b@x.org", "secret@x.org")
    assert b"secret" not in received.data
    parsed = __import__("email").message_from_bytes(received.data, policy=message.policy)
    assert parsed["Subject"] == "Grüße"
    assert parsed.get_content().replace("\r\n", "\n") == "Hällo\n.\nnext line\n"


def test_partial_recipient_rejection_delivers_to_the_others(smtpd: SinkFactory) -> None:
    sink = smtpd(reject_recipients=["nobody@x.org"])
    with connect(sink) as conn:
        result = conn.send(Envelope("a@x.org", ["b@x.org", "nobody@x.org"]), b"hi\r\n")
        assert result.accepted == ["b@x.org"] and result.rejected == ["nobody@x.org"]
        [error] = result.rejected_errors
        assert isinstance(error, EnvelopeError) and error.response_code == 550
        assert error.command == "RCPT TO:<nobody@x.org>"
        assert result.recipient_responses["nobody@x.org"].startswith("550 5.1.1")
    assert sink.messages[0].rcpt_tos == ("b@x.org",)


@pytest.mark.parametrize("pipelining", [False, True])
def test_total_recipient_rejection_raises_and_leaves_the_session_usable(
    smtpd: SinkFactory, pipelining: bool
) -> None:
    sink = smtpd(
        reject_recipients=["x@x.org", "y@x.org"], extensions=["PIPELINING"] if pipelining else []
    )
    with connect(sink) as conn:
        with pytest.raises(EnvelopeError, match="every recipient was refused") as info:
            conn.send(Envelope("a@x.org", ["x@x.org", "y@x.org"]), b"hi\r\n")
        assert info.value.response_code == 550 and not info.value.temporary
        assert conn.state is State.READY and conn.is_connected
        conn.send(Envelope("a@x.org", "ok@x.org"), b"second\r\n")
    assert [m.rcpt_tos for m in sink.messages] == [("ok@x.org",)]


def test_sender_refused(smtpd: SinkFactory) -> None:
    class PickySink(Sink):
        async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def, override]
            if address == "spammer@x.org":
                return "553 5.7.1 sender rejected"
            return await super().handle_MAIL(server, session, envelope, address, options)

    sink = PickySink().start()
    try:
        with connect(sink) as conn:
            with pytest.raises(EnvelopeError, match="sender <spammer@x.org> refused") as info:
                conn.send(Envelope("spammer@x.org", "b@x.org"), b"hi\r\n")
            assert info.value.response_code == 553
            conn.send(Envelope("fine@x.org", "b@x.org"), b"hi\r\n")
        assert [m.mail_from for m in sink.messages] == ["fine@x.org"]
    finally:
        sink.stop()


def test_size_limit_fails_before_data(smtpd: SinkFactory) -> None:
    sink = smtpd(data_size_limit=1000)
    with connect(sink) as conn:
        assert conn.extensions.size == 1000
        big = b"123456789\r\n" * 200
        with pytest.raises(MessageError, match="at most 1000") as info:
            conn.send(Envelope("a@x.org", "b@x.org"), big)
        assert info.value.response_code is None
        # Declared smaller than it is: the server's own limit answers with 552.
        with pytest.raises(MessageError) as info:
            conn.send(Envelope("a@x.org", "b@x.org", size=10), big)
        assert info.value.response_code == 552
        conn.send(Envelope("a@x.org", "b@x.org"), big[:900])
    assert len(sink.messages) == 1


def test_smtputf8_used_when_an_address_needs_it(smtpd: SinkFactory) -> None:
    sink = smtpd()
    message = EmailMessage()
    message["From"] = "jöran@exämple.org"
    message["To"] = "ünïcode@x.org"
    message["Subject"] = "ümlaut"
    message.set_content("ok")
    with connect(sink) as conn:
        conn.send(Envelope("jöran@exämple.org", "ünïcode@x.org"), message)
        conn.send(Envelope("ascii@x.org", "b@x.org"), b"plain\r\n")
    first, second = sink.messages
    assert first.mail_from == "jöran@exämple.org" and "SMTPUTF8" in first.mail_options
    assert "From: jöran@exämple.org".encode() in first.data
    assert "SMTPUTF8" not in second.mail_options


def test_smtputf8_missing_is_a_clear_envelope_error(smtpd: SinkFactory) -> None:
    sink = smtpd(enable_SMTPUTF8=False)
    with connect(sink) as conn:
        assert "SMTPUTF8" not in conn.extensions
        with pytest.raises(EnvelopeError, match="SMTPUTF8"):
            conn.send(Envelope("jöran@x.org", "b@x.org"), b"hi\r\n")
        assert conn.state is State.READY
    assert sink.messages == []


def test_8bitmime_declared_for_8bit_content(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), "Subject: x\r\n\r\nnaïve\r\n".encode())
        conn.send(Envelope("a@x.org", "b@x.org"), b"Subject: x\r\n\r\nascii\r\n")
        conn.send(Envelope("a@x.org", "b@x.org", use_8bit_mime=True), iter([b"x\r\n"]))
    assert ["BODY=8BITMIME" in m.mail_options for m in sink.messages] == [True, False, True]


def test_dsn_parameters_when_advertised(smtpd: SinkFactory) -> None:
    sink = smtpd(extensions=["DSN"])
    dsn = DSN(ret="HDRS", envid="batch 7", notify=["FAILURE", "DELAY"], orcpt="orig@x.org")
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", "b@x.org", dsn=dsn), b"hi\r\n")
    [received] = sink.messages
    assert {"RET=HDRS", "ENVID=BATCH+207"} <= set(received.mail_options)
    assert {"NOTIFY=FAILURE,DELAY", "ORCPT=RFC822;ORIG@X.ORG"} <= set(received.rcpt_options)


def test_dsn_not_sent_when_not_advertised(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", "b@x.org", dsn=DSN(ret="FULL")), b"hi\r\n")
    assert not any(o.startswith("RET") for o in sink.messages[0].mail_options)


@pytest.mark.parametrize("extensions", [["PIPELINING"], ["CHUNKING"], ["PIPELINING", "CHUNKING"]])
def test_pipelining_and_chunking(smtpd: SinkFactory, extensions: list[str]) -> None:
    sink = smtpd(extensions=extensions, reject_recipients=["no@x.org"])
    body = b"Subject: big\r\n\r\n" + b".line\r\n" * 30_000  # several 64 KiB chunks
    with connect(sink) as conn:
        result = conn.send(Envelope("a@x.org", ["b@x.org", "no@x.org", "c@x.org"]), body)
        conn.send(Envelope("a@x.org", "b@x.org"), b"small\r\n")
    assert result.accepted == ["b@x.org", "c@x.org"] and result.rejected == ["no@x.org"]
    big, small = sink.messages
    assert big.data == body and small.data == b"small\r\n"
    expected = "BDAT" if "CHUNKING" in extensions else "DATA"
    assert big.transfer == small.transfer == expected


@pytest.mark.parametrize("extensions", [[], ["CHUNKING"]], ids=["DATA", "BDAT"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(
        st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b": ", b"\xc3\xa9"]), max_size=4).map(
            b"".join
        ),
        max_size=10,
    )
)
@example(chunks=[b"x: y\r", b"\n", b"\nbody\r\n"])  # the blank line was lost
def test_a_message_in_any_chunking_arrives_as_the_whole_message(
    smtpd: SinkFactory, extensions: list[str], chunks: list[bytes]
) -> None:
    """Random split points, empty chunks, lone CR and LF chunks: the server stores the
    same bytes as for the message given in one piece (a lone LF chunk after a CR used
    to eat the next line feed)."""
    sink = smtpd(extensions=extensions)
    before = len(sink.messages)
    content = b"Subject: t\r\n\r\n" + b"".join(chunks)
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), content)
        conn.send(Envelope("a@x.org", "b@x.org"), iter([b"Subject: t\r\n\r\n", *chunks]))
    whole, chunked = sink.messages[before:]
    assert chunked.data == whole.data
    assert chunked.transfer == ("BDAT" if extensions else "DATA")


@pytest.mark.parametrize(
    ("chunks", "limit", "match"),
    [(12, 25_000, "BDAT refused"), (4, 25_000, "BDAT refused"), (4, 35_000, "message refused")],
    ids=["heard before LAST left", "heard after LAST left", "LAST refused"],
)
def test_a_chunk_over_the_limit_fails_the_message_and_the_session_goes_on(
    smtpd: SinkFactory, chunks: int, limit: int, match: str
) -> None:
    """The sink refuses the 10 KB chunk that crosses its limit and answers every chunk
    pipelined after it with 503: the client reads them all, resets, and stays in step."""
    sink = smtpd(extensions=["PIPELINING", "CHUNKING"], data_size_limit=limit)
    content = [b"x" * 9_998 + b"\r\n"] * chunks  # size unknown up front: no SIZE check
    with connect(sink) as conn:
        with pytest.raises(MessageError, match=match) as info:
            conn.send(Envelope("a@x.org", "b@x.org"), iter(content))
        assert info.value.response_code == 552 and not info.value.delivery_unknown
        conn.send(Envelope("a@x.org", "b@x.org"), b"small\r\n")
    assert [m.data for m in sink.messages] == [b"small\r\n"]


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@pytest.mark.parametrize("limit", [None, 30_000], ids=["no limit", "limit"])
def test_random_chunked_messages_keep_the_session_in_step(
    smtpd: SinkFactory, lmtp: bool, limit: int | None
) -> None:
    """1 to 14 chunks of random sizes, recipients refused or not, some messages over the
    sink's limit: every outcome is the expected one and a message sent after it arrives."""
    rng = random.Random(5)
    sink = smtpd(
        lmtp=lmtp,
        extensions=["PIPELINING", "CHUNKING"],
        reject_recipients=["no@x.org"],
        data_size_limit=limit,
    )
    with SMTPConnection(host=sink.host, port=sink.port, lmtp=lmtp, socket_timeout=5) as conn:
        for _ in range(60):
            chunks = [b"x" * rng.randint(0, 12_000) + b"\r\n" for _ in range(rng.randint(1, 14))]
            rcpts = rng.choice([["b@x.org"], ["no@x.org"], ["b@x.org", "no@x.org"]])
            fits = limit is None or sum(map(len, chunks)) <= limit
            if fits and rcpts != ["no@x.org"]:
                result = conn.send(Envelope("a@x.org", rcpts), iter(chunks))
                assert result.rejected == rcpts[1:]
                assert sink.messages[-1].data == b"".join(chunks)
            else:
                error = EnvelopeError if rcpts == ["no@x.org"] else MessageError
                with pytest.raises(error) as info:
                    conn.send(Envelope("a@x.org", rcpts), iter(chunks))
                assert not info.value.delivery_unknown
            conn.send(Envelope("a@x.org", "b@x.org"), b"ping\r\n")
            assert sink.messages[-1].data == b"ping\r\n"


ROUND_TRIPS = [
    b"a\n.\nb\n",
    b"a\r.\rb\r",
    b"a\r\n.\r\nsmuggled: yes\r\n",
    b".\r\n",
    b"..\r\n...\n",
    b"no final newline",
    b"\r\n\r\n.\r\n\r\n",
    b"mixed\r\nline\nends\rhere",
]


@pytest.mark.parametrize("transfer", ["DATA", "BDAT"])
@pytest.mark.parametrize("body", ROUND_TRIPS)
def test_line_endings_and_dots_round_trip(smtpd: SinkFactory, body: bytes, transfer: str) -> None:
    sink = smtpd(extensions=["CHUNKING"] if transfer == "BDAT" else [])
    with connect(sink) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), iter([body[:3], body[3:]]))
    expected = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    [received] = sink.messages
    assert received.data == expected and received.transfer == transfer
    assert len(sink.messages) == 1  # nothing smuggled as a second message


def test_lmtp_reports_each_recipient(smtpd: SinkFactory) -> None:
    class QuotaSink(Sink):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def, override]
            await super().handle_DATA(server, session, envelope)
            return "\r\n".join(
                "452 4.2.2 over quota" if r == "full@x.org" else "250 2.0.0 delivered"
                for r in envelope.rcpt_tos
            )

    sink = QuotaSink(lmtp=True, reject_recipients=["ghost@x.org"]).start()
    try:
        with connect(sink, lmtp=True) as conn:
            result = conn.send(
                Envelope("a@x.org", ["b@x.org", "ghost@x.org", "full@x.org", "c@x.org"]), b"hi\r\n"
            )
            assert result.accepted == ["b@x.org", "c@x.org"]
            assert result.rejected == ["ghost@x.org", "full@x.org"]
            assert [e.response_code for e in result.rejected_errors] == [550, 452]
            assert result.recipient_responses["full@x.org"] == "452 4.2.2 over quota"
            with pytest.raises(MessageError, match="every recipient") as info:
                conn.send(Envelope("a@x.org", ["full@x.org"]), b"hi\r\n")
            assert info.value.temporary
            conn.send(Envelope("a@x.org", ["b@x.org"]), b"again\r\n")
    finally:
        sink.stop()


def test_reset_noop_quit_and_close(smtpd: SinkFactory) -> None:
    sink = smtpd()
    conn = connect(sink)
    assert conn.reset().code == 250
    assert conn.noop().code == 250
    conn.quit()
    assert not conn.is_connected and conn.last_reply is not None and conn.last_reply.code == 221
    conn.quit()  # idempotent
    conn.close()
    with pytest.raises(ConnectError, match="not connected"):
        conn.send(Envelope("a@x.org", "b@x.org"), b"x")


def test_given_socket_is_used_instead_of_dialling(smtpd: SinkFactory) -> None:
    sink = smtpd()
    sock = socket.create_connection((sink.host, sink.port))
    with SMTPConnection(host="mail.invalid", sock=sock) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), b"via given socket\r\n")
    assert sink.messages[0].data == b"via given socket\r\n"


def test_get_socket_hook(smtpd: SinkFactory) -> None:
    sink = smtpd()
    calls = []

    def get_socket(options: object) -> socket.socket:
        calls.append(options)
        return socket.create_connection((sink.host, sink.port))

    with SMTPConnection(host="mail.invalid", get_socket=get_socket) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), b"hooked\r\n")
    assert len(calls) == 1 and len(sink.messages) == 1


def test_ipv6(smtpd: SinkFactory) -> None:
    try:
        sink = smtpd(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with SMTPConnection(host="::1", port=sink.port) as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), b"v6\r\n")
    assert len(sink.messages) == 1


def test_each_resolved_address_is_tried(
    smtpd: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = smtpd()
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: refuses connections
        stream = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
        answers = [
            (*stream, ("127.0.0.1", dead.getsockname()[1])),
            (*stream, ("127.0.0.1", sink.port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
        with SMTPConnection(host="mx.example", port=25) as conn:
            conn.send(Envelope("a@x.org", "b@x.org"), b"second address\r\n")
    assert len(sink.messages) == 1


def test_refused_port_and_unknown_host() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(ConnectError) as info:
            SMTPConnection(host="127.0.0.1", port=port).connect()
    assert info.value.code == "ECONNECTION" and info.value.temporary
    with pytest.raises(ConnectError) as info:
        SMTPConnection(host="no-such-host.invalid", connection_timeout=10).connect()
    assert info.value.code == "EDNS"


def test_local_address(smtpd: SinkFactory) -> None:
    sink = smtpd()
    with SMTPConnection(host="127.0.0.1", port=sink.port, local_address="127.0.0.2") as conn:
        conn.send(Envelope("a@x.org", "b@x.org"), b"from 127.0.0.2\r\n")
    assert len(sink.messages) == 1


def test_an_idn_domain_goes_in_a_label_form_to_a_server_without_smtputf8(
    smtpd: SinkFactory,
) -> None:
    """Only a non-ASCII local part needs SMTPUTF8: an internationalised domain converts
    losslessly to its IDNA A-label.  It used to be refused, and the error named no
    address."""
    sink = smtpd(enable_SMTPUTF8=False)
    with connect(sink) as conn:
        assert "SMTPUTF8" not in conn.extensions
        result = conn.send(Envelope("app@bücher.example", "ann@münchen.example"), b"hi\r\n")
        assert result.accepted == ["ann@münchen.example"]  # as the caller wrote it
        with pytest.raises(EnvelopeError, match="<jörg@x.org>: not ASCII") as info:
            conn.send(Envelope("app@x.org", ["ann@x.org", "jörg@x.org"]), b"hi\r\n")
        assert not info.value.delivery_unknown
        for refused in ("faß.de", "ﬀ.example", "ς.example"):  # IDNA 2003 would change them
            with pytest.raises(EnvelopeError, match=f"<a@{refused}>: not ASCII"):
                conn.send(Envelope("app@x.org", f"a@{refused}"), b"hi\r\n")
        message = EmailMessage()
        message["From"], message["To"] = "Jörg <app@bücher.example>", "ann@München.example"
        message.set_content("hello")
        conn.send(Envelope("app@bücher.example", "ann@München.example"), message)
    first, second = sink.messages
    assert first.mail_from == second.mail_from == "app@xn--bcher-kva.example"
    assert first.rcpt_tos == ("ann@xn--mnchen-3ya.example",)
    # without SMTPUTF8 the headers go in ASCII too: A-labels, the display name RFC 2047
    assert b"From: =?utf-8?q?J=C3=B6rg?= <app@xn--bcher-kva.example>" in second.data
    assert b"To: ann@xn--mnchen-3ya.example" in second.data and second.data.isascii()


def test_an_idn_domain_goes_as_written_to_a_server_with_smtputf8(smtpd: SinkFactory) -> None:
    """Headers stay UTF-8 (RFC 6532) in an SMTPUTF8 session: without that, an address
    domain came out as an encoded-word, which no reply can reach."""
    sink = smtpd()
    message = EmailMessage()
    message["From"], message["To"] = "app@bücher.example", "ann@münchen.example"
    message.set_content("hello")
    with connect(sink) as conn:
        conn.send(Envelope("app@bücher.example", "ann@münchen.example"), message)
    [received] = sink.messages
    assert received.mail_from == "app@bücher.example" and "SMTPUTF8" in received.mail_options
    assert "From: app@bücher.example".encode() in received.data


def test_has_room_counts_messages_handed_but_not_yet_sent(smtpd: SinkFactory) -> None:
    """One rule for the pool's pipelining and the reuse check: max_messages counts the
    messages already handed to the session, and connection_ttl ends the room."""
    sink = smtpd()
    with connect(sink, max_messages=3) as conn:
        assert conn.has_room() and conn.has_room(2) and not conn.has_room(3)
        conn.send(Envelope("a@x.org", "b@x.org"), b"hi\r\n")
        assert conn.has_room(1) and not conn.has_room(2)
    with connect(sink, connection_ttl=0.05) as conn:
        assert conn.has_room()
        time.sleep(0.1)
        assert not conn.has_room() and not conn.is_within_limits()
