"""Message content: turning any supported message into a bounded stream of wire bytes.

:class:`DataEncoder` normalises line endings to CRLF and, for ``DATA``, stuffs leading
dots, one chunk at a time with one byte of carried state, so no byte sequence in a body
can end the data early or smuggle a second message.  :func:`prepare_message` turns an
``EmailMessage``, bytes, str, binary file or iterable of chunks into chunks without
ever reading a file whole.  Pure functions; no sockets or threads (adding a missing
``Date`` reads the clock).
"""

from __future__ import annotations

import copy
import email.utils
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import Message
from typing import Any, BinaryIO

from .domains import ascii_domain, with_ascii_domain

__all__ = [
    "CHUNK_BYTES",
    "DataEncoder",
    "MessageInput",
    "MessageSource",
    "flatten_message",
    "prepare_message",
    "strip_bcc",
]

#: Size of the pieces a message is read and sent in.
CHUNK_BYTES = 64 * 1024

MessageInput = Message | bytes | bytearray | memoryview | str | BinaryIO | Iterable[bytes]

#: A line that starts with a dot (after the first): the only case dot-stuffing changes.
_DOT_LINE = re.compile(rb"\n\.")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
#: The headers that hold addresses (RFC 5322 3.6.2, 3.6.3 and 3.6.6).
_ADDRESS_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc",
                    "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc")  # fmt: skip
_BCC_FIELD = re.compile(rb"^(?:resent-)?bcc:.*(?:\r?\n[ \t].*)*\r?\n", re.IGNORECASE | re.MULTILINE)


class DataEncoder:
    """Stream encoder for message content: CRLF line endings, optional dot-stuffing.

    Every bare CR and bare LF becomes CRLF (a CR at the end of a chunk is written as
    CRLF at once and an LF opening the next chunk is then dropped), so a ``.`` after a
    bare CR is at a line start and gets stuffed too: the SMTP-smuggling defence.
    ``dot_stuff=False`` is the BDAT (CHUNKING) flavour: same normalisation, no stuffing.
    Both are C-level passes: ``splitlines`` (which for bytes breaks at CR, LF and CRLF
    only) joined with CRLF, and a regex search that skips the dot ``replace`` when no
    line starts with a dot; about half the cost of counting CR, LF and CRLF to prove a
    chunk clean (2.9 against 4.9 µs for 2 KB here).
    """

    __slots__ = ("dot_stuff", "_at_line_start", "_skip_lf")

    def __init__(self, *, dot_stuff: bool = True) -> None:
        self.dot_stuff = dot_stuff
        self._at_line_start = True  # the next output byte starts a line
        self._skip_lf = False  # input ended in CR, already written as CRLF

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Encode the next piece of content."""
        data = chunk if type(chunk) is bytes else bytes(chunk)
        if not data:
            return b""
        if self._skip_lf:  # this chunk's first byte decides; only that one LF is dropped
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
                if not data:
                    return b""
        last = data[-1:]
        self._skip_lf = last == b"\r"
        lines = data.splitlines()
        if last == b"\n" or last == b"\r":
            lines.append(b"")  # the join then ends with CRLF
        data = b"\r\n".join(lines)
        if self.dot_stuff:
            if _DOT_LINE.search(data):
                data = data.replace(b"\n.", b"\n..")
            if self._at_line_start and data[:1] == b".":
                data = b"." + data
        self._at_line_start = data[-1:] == b"\n"
        return data

    def finish(self) -> bytes:
        """End the content: complete the last line and, for DATA, add the terminator."""
        if self.dot_stuff:
            return b".\r\n" if self._at_line_start else b"\r\n.\r\n"
        return b"" if self._at_line_start else b"\r\n"


@dataclass(slots=True)
class MessageSource:
    """A message ready to stream: its chunks, and what is known about it up front."""

    chunks: Iterator[bytes]
    size: int | None  #: bytes, when known without reading (for the SIZE extension)
    eight_bit: bool  #: content known to contain bytes above 0x7f


def flatten_message(
    message: Message,
    *,
    international: bool = False,
    ascii_domains: bool = False,
    add_missing_headers: bool = True,
) -> bytes:
    """Serialise like :meth:`smtplib.SMTP.send_message`: CRLF, Bcc and Resent-Bcc removed.
    The caller's message is left as it was.

    :param international: UTF-8 headers (RFC 6532), for an SMTPUTF8 session.
    :param ascii_domains: rewrite internationalised domains in address headers to their
        IDNA A-labels, for a server without SMTPUTF8.
    :param add_missing_headers: add ``Date`` and ``Message-ID`` when missing (and
        ``Resent-Date``/``Resent-Message-ID`` to a resent message), as Django,
        Flask-Mail and Nodemailer do.  This reads the clock.
    """
    message = copy.copy(message)
    del message["Bcc"]  # each del gives the copy a header list of its own
    del message["Resent-Bcc"]
    if ascii_domains:
        _rewrite_domains(message)
    if add_missing_headers:
        _add_date_and_message_id(message, "")
        if message["Resent-From"] is not None:
            _add_date_and_message_id(message, "Resent-")
    policy = message.policy.clone(utf8=True) if international else message.policy  # type: ignore[call-arg]
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=policy).flatten(message, linesep="\r\n")
    return buffer.getvalue()


def _add_date_and_message_id(message: Message, prefix: str) -> None:
    if message[prefix + "Date"] is None:
        message[prefix + "Date"] = email.utils.formatdate(localtime=True)
    if message[prefix + "Message-ID"] is None:
        sender = email.utils.parseaddr(str(message[prefix + "From"] or ""))[1]
        domain = ascii_domain(sender.rpartition("@")[2]) or "smtppool.invalid"
        message[prefix + "Message-ID"] = email.utils.make_msgid(domain=domain)  # no DNS


def _rewrite_domains(message: Message) -> None:
    """Address headers with their internationalised domains as A-labels (local parts and
    display names as they are; a display name is encoded as RFC 2047 allows)."""
    for name in _ADDRESS_HEADERS:
        values = [str(v) for v in message.get_all(name) or []]
        if all(value.isascii() for value in values):
            continue
        del message[name]
        for value in values:
            message[name] = ", ".join(
                email.utils.formataddr((display, with_ascii_domain(address)))
                for display, address in email.utils.getaddresses([value])
            )


def strip_bcc(raw: bytes) -> bytes:
    """Remove ``Bcc`` and ``Resent-Bcc`` fields (folded lines included) from a raw header."""
    end = _HEADER_END.search(raw)
    split = end.end() if end else len(raw)
    head = raw[:split]
    if b"cc:" not in head.lower():
        return raw
    return _BCC_FIELD.sub(b"", head) + raw[split:]


def _slices(data: bytes, chunk_size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


def _read_file(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while True:
        chunk = file.read(chunk_size)
        if not chunk:
            return
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError("message files must be opened in binary mode ('rb')")
        yield bytes(chunk)


def _checked_chunks(chunks: Iterable[Any]) -> Iterator[bytes]:
    for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"message chunks must be bytes, not {type(chunk).__name__}")
        yield bytes(chunk)


def _remaining_file_size(file: Any) -> int | None:
    """Bytes left to read, from ``fstat`` or by seeking; None for pipes and sockets."""
    try:
        position: int = file.tell()
        try:
            total: int = os.fstat(file.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            if not file.seekable():
                return None
            total = file.seek(0, io.SEEK_END)
            file.seek(position)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return max(total - position, 0)


def prepare_message(
    message: MessageInput,
    *,
    international: bool = False,
    ascii_domains: bool = False,
    add_missing_headers: bool = True,
    chunk_size: int = CHUNK_BYTES,
) -> MessageSource:
    """Describe ``message`` as a stream of chunks, reading nothing that is not in memory.
    Only a :class:`~email.message.Message` gets missing headers added; bytes, text,
    files and iterables go as they are.

    :raises TypeError: an unsupported message type, or a file opened in text mode.
    """
    if isinstance(message, Message):
        message = flatten_message(
            message,
            international=international,
            ascii_domains=ascii_domains,
            add_missing_headers=add_missing_headers,
        )
    elif isinstance(message, str):
        message = message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
        chunks = iter((data,)) if len(data) <= chunk_size else _slices(data, chunk_size)
        return MessageSource(chunks, len(data), not data.isascii())
    if hasattr(message, "read"):
        if isinstance(message, io.TextIOBase):
            raise TypeError("message files must be opened in binary mode ('rb')")
        file: BinaryIO = message  # type: ignore[assignment]
        return MessageSource(_read_file(file, chunk_size), _remaining_file_size(file), False)
    if isinstance(message, Iterable):
        return MessageSource(_checked_chunks(message), None, False)
    raise TypeError(
        "message must be an email.message.Message, bytes, str, a binary file "
        f"or an iterable of bytes, not {type(message).__name__}"
    )
