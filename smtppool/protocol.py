"""Sans-IO SMTP/LMTP client protocol: intents in, command bytes out; bytes in, replies out.

:class:`SMTPProtocol` never touches a socket, a thread or a clock (h11's rule).  Command
builders check the client's state and their arguments *before* producing bytes, and
push an expectation onto a FIFO so each parsed :class:`Reply` comes back tagged with the
command it answers; that FIFO is also what enforces RFC 2920 pipelining groups.
Misbehaviour by the peer raises :class:`ProtocolError` and leaves the object ``FAILED``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from .envelope import DSN, check_address, xtext
from .errors import ProtocolError
from .message import DataEncoder
from .replies import Extensions, Reply
from .states import GROUP_ENDERS, ON_REPLY, ON_SEND, ReplySteps, State

__all__ = ["Extensions", "Reply", "SMTPProtocol", "State", "decode_challenge", "xtext"]

#: Longest reply line accepted, without its CRLF.
MAX_LINE_LENGTH = 8 * 1024
#: Most lines accepted in one multi-line reply.
MAX_REPLY_LINES = 1000

#: What may not appear in a command line: C0 and C1 controls, DEL, and white space other
#: than the plain space (a server splitting on any white space would see another word).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\S ]")
#: Valid reply codes (2xx-5xx) by their three bytes: validation and int() in one lookup.
_REPLY_CODES = {str(code).encode(): code for code in range(200, 600)}
_SEPARATORS = (b" ", b"-", b"")
#: Attribute access on an Enum class is a slow lookup in CPython (about 55 ns), and the
#: per-reply path tests for this state.
_FAILED = State.FAILED
#: The table's names for what is not a command line, as errors say them.
_EVENT_NAMES = {
    "<content>": "message content (only after a 354 reply)",
    ".": "the end of data (only after a 354 reply)",
    "<auth response>": "an AUTH response (only right after a 334 reply)",
}


@dataclass(slots=True)
class _Transaction:
    accepted: int = 0
    final_left: int | None = None  # LMTP: final replies still expected


@dataclass(slots=True)
class _Pending:
    verb: str
    command: str  # redacted command line, as reported in replies and errors
    txn: _Transaction | None = None
    final: bool = False  # answers the end of the message data


def decode_challenge(reply: Reply) -> bytes:
    """Decode the base64 challenge of a 334 reply."""
    try:
        return base64.b64decode(reply.lines[0].strip() if reply.lines else "", validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "AUTH challenge is not valid base64",
            response=str(reply),
            response_code=reply.code,
            command=reply.command,
        ) from None


class SMTPProtocol:
    """The client side of one SMTP or LMTP session, without any I/O."""

    def __init__(
        self,
        *,
        lmtp: bool = False,
        max_line_length: int = MAX_LINE_LENGTH,
        max_reply_lines: int = MAX_REPLY_LINES,
    ) -> None:
        self.lmtp = lmtp
        self.max_line_length = max_line_length
        self.max_reply_lines = max_reply_lines
        self.state = State.GREETING
        self.extensions = Extensions()
        self.authenticated = False
        self._buffer = bytearray()
        self._eof = False
        self._lines: list[str] = []
        self._code = 0
        self._pending: deque[_Pending] = deque([_Pending("<greeting>", "<greeting>")])
        self._txn: _Transaction | None = None
        self._utf8 = False
        self._encoder: DataEncoder | None = None

    def __repr__(self) -> str:
        return f"<SMTPProtocol state={self.state.name} pending={len(self._pending)}>"

    # -- receiving ---------------------------------------------------------------------

    @property
    def peer_closed(self) -> bool:
        """True once the server closed its side (``receive_data(b"")``)."""
        return self._eof

    @property
    def pending(self) -> int:
        """How many replies are still expected."""
        return len(self._pending)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server; ``b""`` means the server closed the connection."""
        self._check_usable()
        if self._eof and data:
            self._fail("data received after end of stream")
        if not data:
            self._eof = True
            self._end()
            return
        self._buffer += data

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None if more data is needed."""
        if self.state is _FAILED:
            self._check_usable()
        buffer = self._buffer
        while (newline := buffer.find(b"\n")) >= 0:
            end = newline - 1 if newline and buffer[newline - 1] == 13 else newline  # CR
            line = bytes(buffer[:end])
            del buffer[: newline + 1]
            if end > self.max_line_length:
                self._fail(f"reply line longer than {self.max_line_length} bytes")
            sep = line[3:4]
            code = _REPLY_CODES.get(line[:3], 0)
            if not code or sep not in _SEPARATORS:
                self._fail(f"malformed reply line {line[:80]!r}")
            text = line[4:].decode("utf-8", "replace")
            if sep != b"-" and not self._lines:  # the usual single-line reply
                return self._on_reply(code, (text,))
            if self._lines and code != self._code:
                self._fail(f"multi-line reply mixes codes {self._code} and {code}")
            self._code = code
            self._lines.append(text)
            if len(self._lines) > self.max_reply_lines:
                self._fail(f"reply has more than {self.max_reply_lines} lines")
            if sep != b"-":
                lines, self._lines = tuple(self._lines), []
                return self._on_reply(code, lines)
        if len(buffer) > self.max_line_length + 1:
            self._fail(f"reply line longer than {self.max_line_length} bytes")
        return None

    def _on_reply(self, code: int, lines: tuple[str, ...]) -> Reply:
        if not self._pending:
            if code == 421:  # RFC 5321 §3.8: the server may close the session at any time
                self._end()
                return Reply(code, lines, None)
            self._fail(f"unexpected reply {code} {' '.join(lines)[:80]!r} with no command pending")
        pending = self._pending.popleft()
        reply = Reply(code, lines, pending.command)
        txn = pending.txn
        if txn is not None:
            if pending.verb == "RCPT" and 200 <= code < 300:
                txn.accepted += 1
            elif pending.final and self.lmtp:  # one reply per accepted recipient
                if txn.final_left is None:
                    txn.final_left = max(txn.accepted, 1)
                txn.final_left -= 1
                if txn.final_left > 0:
                    self._pending.appendleft(pending)
        if code == 421:
            self._end()
        elif (steps := ON_REPLY.get(pending.verb)) is not None and (
            txn is None or txn is self._txn
        ):
            self._advance(steps, reply)  # a reply to an earlier, stacked transaction: no change
        return reply

    def _advance(self, steps: ReplySteps, reply: Reply) -> None:
        """Apply the first of a verb's reply transitions (``ON_REPLY``, derived from
        :data:`smtppool.states.TRANSITIONS`) that ``reply`` matches in the current
        state; none, no change."""
        state = self.state
        for test, when, then, effect in steps:
            if state in when and test(reply.code):
                if effect:
                    self._apply(effect, reply)
                if then is not None:
                    self.state = then
                return

    def _end(self) -> None:
        """The session is over (a 421, or the server hung up)."""
        when, then = ON_SEND["<closed>"]
        if self.state in when and then is not None:
            self.state = then

    def _apply(self, effect: str, reply: Reply) -> None:
        """What a reply means besides the change of state."""
        if effect == "extensions":
            self.extensions = Extensions.parse(reply.lines[1:])
        elif effect == "no extensions":
            self.extensions = Extensions()
        elif effect == "tls":
            if self._buffer:
                self._fail("server sent data after its STARTTLS reply (response injection)")
            self.extensions = Extensions()
        elif effect == "login":
            self.authenticated = reply.code == 235
        elif effect == "message":
            self._encoder = DataEncoder(dot_stuff=True)

    # -- sending -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.state == _FAILED:
            raise ProtocolError("the SMTP session failed earlier and cannot be used")

    def _fail(self, message: str) -> NoReturn:
        """The peer broke the protocol: the object refuses further use."""
        self.state = _FAILED
        raise ProtocolError(message)

    def _issue(
        self,
        verb: str,
        line: str,
        *,
        redacted: str | None = None,
        txn: _Transaction | None = None,
        payload: bytes = b"",
    ) -> bytes:
        """Check state, pipelining and injection rules, record the expectation, encode."""
        if self.state is _FAILED:
            self._check_usable()
        after = self._allowed(verb)
        if not line.isprintable() and _CONTROL.search(line):  # isprintable: the cheap test
            raise ValueError(f"control character in {verb} command {line[:80]!r}")
        if not self._pending and self._buffer and not self._buffer.startswith(b"421"):
            # Bytes nobody asked for would be read as the reply to this command.
            self._fail(f"server sent unsolicited data {bytes(self._buffer[:80])!r}")
        if self._pending:
            last = self._pending[-1]
            if "PIPELINING" not in self.extensions.keywords:
                raise ValueError(
                    f"cannot send {verb} before the reply to {last.command!r}: "
                    "the server does not offer PIPELINING"
                )
            if last.verb in GROUP_ENDERS:
                raise ValueError(f"{verb} cannot be pipelined after {last.verb} (RFC 2920)")
        try:
            encoded = line.encode("utf-8" if self._utf8 else "ascii") + b"\r\n"
        except UnicodeEncodeError:
            raise ValueError(f"non-ASCII {verb} argument needs SMTPUTF8: {line!r}") from None
        final = verb == "BDAT LAST"
        self._pending.append(_Pending("BDAT" if final else verb, redacted or line, txn, final))
        if after is not None:
            self.state = after
        return encoded + payload

    def _allowed(self, verb: str) -> State | None:
        """The state sending ``verb`` leads to (None: it stays); ValueError when the
        table does not allow ``verb`` in the current state."""
        when, then = ON_SEND[verb]
        if self.state not in when:
            what = _EVENT_NAMES.get(verb, verb)
            raise ValueError(f"cannot send {what} in state {self.state.name}")
        return then

    def _hello_name(self, name: str) -> str:
        if not name or _CONTROL.search(name) or " " in name:
            raise ValueError(f"invalid EHLO name {name!r}")
        return name

    def ehlo(self, name: str) -> bytes:
        """``EHLO name`` (``LHLO`` for LMTP); a positive reply sets :attr:`extensions`."""
        verb = "LHLO" if self.lmtp else "EHLO"
        return self._issue(verb, f"{verb} {self._hello_name(name)}")

    def helo(self, name: str) -> bytes:
        """``HELO name``: the fallback for servers that refuse EHLO (not in LMTP)."""
        if self.lmtp:
            raise ValueError("LMTP has no HELO; use ehlo() (LHLO)")
        return self._issue("HELO", f"HELO {self._hello_name(name)}")

    def starttls(self) -> bytes:
        return self._issue("STARTTLS", "STARTTLS")

    def auth(self, mechanism: str, initial_response: bytes | None = None) -> bytes:
        """Open an AUTH exchange; the initial response is sent base64-encoded and redacted."""
        mechanism = mechanism.upper()
        if initial_response is None:
            return self._issue("AUTH", f"AUTH {mechanism}")
        encoded = base64.b64encode(initial_response).decode("ascii") or "="
        return self._issue("AUTH", f"AUTH {mechanism} {encoded}", redacted=f"AUTH {mechanism} ****")

    def auth_continue(self, response: bytes) -> bytes:
        """Answer a 334 challenge; the line is logged and reported only as ``****``."""
        if self._pending:
            raise ValueError("auth_continue() is only valid right after a 334 reply")
        self._allowed("<auth response>")
        self._pending.append(_Pending("AUTH", "****"))
        return base64.b64encode(response) + b"\r\n"

    def mail(
        self,
        sender: str,
        *,
        size: int | None = None,
        eight_bit: bool = False,
        smtputf8: bool = False,
        dsn: DSN | None = None,
    ) -> bytes:
        """``MAIL FROM``, with each parameter added only when the server offers it."""
        check_address(sender, "sender")
        if smtputf8 and "SMTPUTF8" not in self.extensions.keywords:
            raise ValueError("SMTPUTF8 requested but the server does not offer it")
        params = []
        if size is not None and "SIZE" in self.extensions.keywords:
            params.append(f"SIZE={int(size)}")
        if eight_bit and "8BITMIME" in self.extensions.keywords:
            params.append("BODY=8BITMIME")
        if smtputf8:
            params.append("SMTPUTF8")
        if dsn is not None and "DSN" in self.extensions.keywords:
            if dsn.ret:
                params.append(f"RET={dsn.ret}")
            if dsn.encoded_envid:
                params.append(f"ENVID={dsn.encoded_envid}")
        self._utf8 = smtputf8
        txn = _Transaction()
        data = self._issue("MAIL", " ".join([f"MAIL FROM:<{sender}>", *params]), txn=txn)
        self._txn = txn
        return data

    def rcpt(self, recipient: str, *, dsn: DSN | None = None) -> bytes:
        """``RCPT TO``, with DSN ``NOTIFY``/``ORCPT`` when requested and offered."""
        check_address(recipient, "recipient")
        params = []
        if dsn is not None and "DSN" in self.extensions.keywords:
            if dsn.notify:
                params.append(f"NOTIFY={','.join(dsn.notify)}")
            if dsn.encoded_orcpt:
                params.append(f"ORCPT={dsn.encoded_orcpt}")
        return self._issue("RCPT", " ".join([f"RCPT TO:<{recipient}>", *params]), txn=self._txn)

    def data(self) -> bytes:
        return self._issue("DATA", "DATA")

    def send_data(self, chunk: bytes) -> bytes:
        """Encode a piece of message content (after 354): CRLF line ends, dots stuffed."""
        self._allowed("<content>")
        assert self._encoder is not None  # set with the 354
        return self._encoder.feed(chunk)

    def end_data(self) -> bytes:
        """Finish the content with the terminator the last byte calls for."""
        after = self._allowed(".")
        assert self._encoder is not None  # set with the 354
        data = self._encoder.finish()
        self._pending.append(_Pending(".", "<end of data>", self._txn, final=True))
        self._encoder = None
        if after is not None:
            self.state = after
        return data

    def bdat(self, chunk: bytes, *, last: bool = False) -> bytes:
        """``BDAT n [LAST]`` followed by the chunk, CRLF-normalised (CHUNKING, RFC 3030)."""
        if "CHUNKING" not in self.extensions.keywords:
            raise ValueError("BDAT needs the CHUNKING extension")
        verb = "BDAT LAST" if last else "BDAT"
        self._allowed(verb)
        if self.state is State.RCPT:  # the first chunk
            self._encoder = DataEncoder(dot_stuff=False)
        assert self._encoder is not None  # set with the first chunk
        payload = self._encoder.feed(chunk) + (self._encoder.finish() if last else b"")
        line = f"BDAT {len(payload)}" + (" LAST" if last else "")
        data = self._issue(verb, line, txn=self._txn, payload=payload)
        if last:
            self._encoder = None
        return data

    def rset(self) -> bytes:
        self._encoder = None
        return self._issue("RSET", "RSET")

    def noop(self) -> bytes:
        return self._issue("NOOP", "NOOP")

    def quit(self) -> bytes:
        return self._issue("QUIT", "QUIT")
