"""DataEncoder tables and properties; message sources (flattening, files, iterables)."""

from __future__ import annotations

import io
import re
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtppool.message import DataEncoder, flatten_message, prepare_message

DATA_CASES = [
    (b"", b".\r\n"),
    (b"hello", b"hello\r\n.\r\n"),
    (b"hello\r\n", b"hello\r\n.\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"x\n.\nmore", b"x\r\n..\r\nmore\r\n.\r\n"),
    (b"x\r.\rmore", b"x\r\n..\r\nmore\r\n.\r\n"),  # smuggling: bare CR then dot
    (b"x\r\n.\r\nsmuggled", b"x\r\n..\r\nsmuggled\r\n.\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    (b"..double", b"...double\r\n.\r\n"),
    (b"Subject: t\r\n\nbody\r\n", b"Subject: t\r\n\r\nbody\r\n.\r\n"),
]


@pytest.mark.parametrize("raw, wire", DATA_CASES)
def test_data_encoding_table(raw: bytes, wire: bytes) -> None:
    encoder = DataEncoder()
    assert encoder.feed(raw) + encoder.finish() == wire


@pytest.mark.parametrize("raw, wire", DATA_CASES)
def test_data_encoding_byte_by_byte(raw: bytes, wire: bytes) -> None:
    encoder = DataEncoder()
    out = b"".join(encoder.feed(raw[i : i + 1]) for i in range(len(raw)))
    assert out + encoder.finish() == wire


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    encoder = DataEncoder()
    assert encoder.feed(b"a\r") + encoder.feed(b"\n.b") + encoder.finish() == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize("dot_stuff", [True, False], ids=["DATA", "BDAT"])
def test_a_lone_lf_chunk_after_a_cr_keeps_the_next_line_feed(dot_stuff: bool) -> None:
    """The LF completing a CR that ended the previous chunk was dropped, but the state
    that says "drop it" stayed set when that LF was the whole chunk: the next chunk's
    leading LF went too, and with it the blank line between header and body."""
    encoder = DataEncoder(dot_stuff=dot_stuff)
    wire = b"".join(encoder.feed(c) for c in [b"Subject: t\r", b"\n", b"\nbody\r\n"])
    assert wire == b"Subject: t\r\n\r\nbody\r\n"


def test_bdat_flavour_normalises_without_stuffing() -> None:
    encoder = DataEncoder(dot_stuff=False)
    assert encoder.feed(b".a\n.b") + encoder.finish() == b".a\r\n.b\r\n"
    empty = DataEncoder(dot_stuff=False)
    assert empty.finish() == b""


def normalise(raw: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


payloads = st.lists(
    st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"xy", b"\x00", b"\xff"]), max_size=60
).map(b"".join)


@given(payloads, st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_any_chunking_gives_the_one_shot_encoding(raw: bytes, cuts: list[int]) -> None:
    whole = DataEncoder()
    expected = whole.feed(raw) + whole.finish()
    bounds = [0, *sorted(min(c, len(raw)) for c in cuts), len(raw)]
    chunked = DataEncoder()
    out = b"".join(chunked.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    assert out + chunked.finish() == expected


#: Chunk lists as callers give them: empty chunks, lone CR and LF, line breaks and dots
#: at the edges.
chunk_lists = st.lists(
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\xff"]), max_size=3).map(b"".join),
    max_size=12,
)


@pytest.mark.parametrize("dot_stuff", [True, False], ids=["DATA", "BDAT"])
@settings(max_examples=500)
@given(chunks=chunk_lists)
def test_any_chunk_list_encodes_as_the_whole_message(dot_stuff: bool, chunks: list[bytes]) -> None:
    whole = DataEncoder(dot_stuff=dot_stuff)
    expected = whole.feed(b"".join(chunks)) + whole.finish()
    chunked = DataEncoder(dot_stuff=dot_stuff)
    assert b"".join(map(chunked.feed, chunks)) + chunked.finish() == expected


@given(payloads)
def test_output_is_clean_and_unstuffs_to_the_normalised_input(raw: bytes) -> None:
    encoder = DataEncoder()
    wire = encoder.feed(raw) + encoder.finish()
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")  # no bare CR or LF
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1]
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))
    expected = normalise(raw)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    unstuffed = b"".join((line[1:] if line[:1] == b"." else line) + b"\r\n" for line in lines)
    assert unstuffed == expected


def test_flatten_drops_bcc_and_uses_crlf() -> None:
    message = EmailMessage()
    message["From"] = "a@x.org"
    message["To"] = "b@x.org"
    message["Bcc"] = "hidden@x.org"
    message["Subject"] = "Grüße"
    message.set_content("line one\nline two\n")
    wire = flatten_message(message)
    assert b"hidden" not in wire and b"Bcc" not in wire
    assert wire.count(b"\n") == wire.count(b"\r\n")
    assert b"=?utf-8?" in wire  # non-ASCII header encoded without SMTPUTF8
    assert message["Bcc"] == "hidden@x.org"  # the caller's message is untouched


def test_flatten_international_keeps_utf8_headers() -> None:
    message = EmailMessage()
    message["From"] = "jöran@x.org"
    message["To"] = "b@x.org"
    message.set_content("hi")
    assert "jöran@x.org".encode() in flatten_message(message, international=True)


def test_compat32_message_flattens() -> None:
    message = Message()
    message["From"] = "a@x.org"
    message.set_payload("body\n")
    source = prepare_message(message)
    assert b"".join(source.chunks).endswith(b"body\r\n")


def test_bytes_and_str_sources() -> None:
    source = prepare_message(b"abc" * 50_000, chunk_size=65536)
    chunks = list(source.chunks)
    assert source.size == 150_000 and not source.eight_bit
    assert [len(c) for c in chunks] == [65536, 65536, 18928]
    text = prepare_message("héllo")
    assert text.size == 6 and text.eight_bit


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.requests.append(-1 if size is None else size)
        return super().read(size)


def test_files_are_read_in_chunks_never_whole() -> None:
    file = CountingFile(b"x" * 200_000)
    source = prepare_message(file, chunk_size=65536)
    assert source.size == 200_000
    assert sum(len(c) for c in source.chunks) == 200_000
    assert file.requests and all(size == 65536 for size in file.requests)


def test_file_size_from_current_position(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "m.eml"  # type: ignore[operator]
    path.write_bytes(b"0123456789")
    with open(path, "rb") as file:
        file.read(4)
        assert prepare_message(file).size == 6


def test_text_files_and_wrong_types_are_refused() -> None:
    with pytest.raises(TypeError, match="binary mode"):
        prepare_message(io.StringIO("x"))
    with pytest.raises(TypeError, match="must be an email.message"):
        prepare_message(42)  # type: ignore[arg-type]
    source = prepare_message(iter([b"ok", "not bytes"]))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="chunks must be bytes"):
        list(source.chunks)


def test_iterables_stream_lazily() -> None:
    produced = []

    def generate() -> object:
        for i in range(3):
            produced.append(i)
            yield b"chunk%d" % i

    source = prepare_message(generate())  # type: ignore[arg-type]
    assert source.size is None and produced == []
    assert next(source.chunks) == b"chunk0" and produced == [0]
