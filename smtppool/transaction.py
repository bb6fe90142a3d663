"""The transaction: one message on an open session, and what came of it.

:class:`Sender` holds the four ways of sending a message (DATA or BDAT, with or without
PIPELINING) and the pieces the session's cross-transaction pipelining is built from;
:func:`judge_envelope` reads the MAIL and RCPT replies into an :class:`EnvelopeVerdict`,
a small value that turns the end-of-data verdicts into the :class:`SendResult`.  It
speaks to the server through the session's :class:`~smtppool.channel.Channel` (the
protocol, writes and reads with deadlines); it opens and closes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

from .channel import Channel
from .envelope import Envelope, SendResult, ascii_address
from .errors import (
    ConnectError,
    EnvelopeError,
    MessageError,
    SMTPError,
    SMTPTimeoutError,
)
from .message import MessageInput, MessageSource, prepare_message
from .protocol import Extensions, Reply, SMTPProtocol

__all__ = [
    "BDAT_WINDOW",
    "EnvelopeVerdict",
    "Item",
    "Outbound",
    "Outgoing",
    "Sender",
    "judge_envelope",
]

#: Most BDAT chunks sent ahead of their replies under PIPELINING (64 KiB each from files
#: and bytes, so about half a megabyte in flight).
BDAT_WINDOW = 8


def _lost_after_end_of_data(exc: ConnectError | SMTPTimeoutError) -> None:
    """A connection lost after the end of the data, with no verdict, may have delivered
    the message.  When the write of the end itself failed part-way this is conservative:
    the terminator may not have left."""
    if exc.response_code is None:
        exc.delivery_unknown = True


class Outgoing(Protocol):
    """A message to send in a run (:meth:`SMTPConnection.send_each`): its envelope, and
    its content, asked for once, when the message goes out."""

    @property
    def envelope(self) -> Envelope | Mapping[str, Any]: ...

    def content(self) -> MessageInput: ...


#: The type of a run's items (any :class:`Outgoing`), handed back with their outcomes.
Item = TypeVar("Item", bound=Outgoing)


@dataclass(slots=True)
class Outbound:
    """One message as this session sends it, decided once by :meth:`Sender.prepare`:
    its envelope, its content, and whether it goes with SMTPUTF8, with the addresses
    as they go on the wire (as written, or with A-label domains)."""

    envelope: Envelope
    source: MessageSource
    smtputf8: bool
    mail_from: str
    rcpt_to: tuple[str, ...]


@dataclass(slots=True)
class EnvelopeVerdict:
    """What the MAIL and RCPT replies said: who was accepted, who refused and why, and
    the failure that ends the transaction, if any."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    errors: list[SMTPError] = field(default_factory=list)
    #: The reply that decided each recipient's fate so far.
    responses: dict[str, str] = field(default_factory=dict)
    failure: SMTPError | None = None

    def result(self, env: Envelope, finals: list[Reply], *, lmtp: bool) -> SendResult:
        """The outcome once the end of the data was answered (``finals``: one reply, or
        under LMTP one per accepted recipient).

        :raises MessageError: the message was refused (for every recipient).
        """
        accepted, rejected, errors, responses = (
            self.accepted,
            self.rejected,
            self.errors,
            self.responses,
        )
        if lmtp:
            for recipient, reply in zip(list(accepted), finals, strict=True):
                responses[recipient] = str(reply)
                if not reply.is_positive:
                    accepted.remove(recipient)
                    rejected.append(recipient)
                    errors.append(
                        MessageError.from_reply(reply, f"message refused for <{recipient}>")
                    )
        elif not finals[0].is_positive:
            raise MessageError.from_reply(finals[0], "message refused")
        if not accepted:
            raise MessageError.from_reply(finals[-1], "message refused for every recipient")
        return SendResult(accepted, rejected, errors, str(finals[-1]), env, responses)


def judge_envelope(env: Envelope, mail_reply: Reply, rcpt_replies: list[Reply]) -> EnvelopeVerdict:
    """Sort recipients by their replies; the failure, if the transaction cannot go on."""
    verdict = EnvelopeVerdict()
    for recipient, reply in zip(env.rcpt_to, rcpt_replies, strict=False):
        verdict.responses[recipient] = str(reply)
        if reply.is_positive:
            verdict.accepted.append(recipient)
        else:
            verdict.rejected.append(recipient)
            verdict.errors.append(
                EnvelopeError.from_reply(reply, f"recipient <{recipient}> refused")
            )
    if not mail_reply.is_positive:
        verdict.failure = EnvelopeError.from_reply(mail_reply, f"sender <{env.mail_from}> refused")
    elif not verdict.accepted:
        verdict.failure = EnvelopeError.from_reply(rcpt_replies[-1], "every recipient was refused")
    return verdict


class Sender:
    """Sends messages on one session: see the module's docstring."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self.options = channel.options
        self._write = channel.write
        self._stream = channel.stream
        self._read_reply = channel.read_reply
        self._command = channel.command

    @property
    def _protocol(self) -> SMTPProtocol:
        return self._channel.protocol  # a new one for each session

    @property
    def extensions(self) -> Extensions:
        return self._channel.protocol.extensions

    def prepare(self, message: MessageInput, env: Envelope) -> Outbound:
        """Decide how ``env`` goes on this session, once: with SMTPUTF8 (addresses and
        headers as written) when an address is not ASCII and the server offers it, else
        in ASCII; then describe the message's content for that.

        :raises EnvelopeError: an address needs SMTPUTF8, which the server lacks.
        """
        utf8 = env.is_international and "SMTPUTF8" in self.extensions
        if env.needs_smtputf8 and not utf8:
            needy = [a for a in (env.mail_from, *env.rcpt_to) if ascii_address(a) is None]
            raise EnvelopeError(
                f"{', '.join(f'<{a}>' for a in needy)}: not ASCII (a local part, or a domain "
                "IDNA cannot encode unchanged), and the server does not offer SMTPUTF8"
            )
        source = prepare_message(
            message,
            international=utf8,
            ascii_domains=env.is_international and not utf8,
            add_missing_headers=self.options.add_missing_headers,
        )
        if utf8:
            return Outbound(env, source, True, env.mail_from, tuple(env.rcpt_to))
        return Outbound(env, source, False, env.ascii_mail_from, env.ascii_rcpt_to)

    def _mail_command(self, out: Outbound) -> bytes:
        """MAIL FROM with its parameters, after the SIZE check, which needs no round trip.

        :raises MessageError: the message is larger than the server's SIZE.
        """
        env, source, limit = out.envelope, out.source, self.extensions.size
        size = env.size if env.size is not None else source.size
        if size is not None and limit is not None and size > limit:
            raise MessageError(f"message is {size} bytes; the server accepts at most {limit}")
        return self._protocol.mail(
            out.mail_from,
            size=size,
            smtputf8=out.smtputf8,
            dsn=env.dsn,
            eight_bit=env.use_8bit_mime or source.eight_bit,
        )

    def send(self, out: Outbound) -> SendResult:
        """One message on a READY session: the way the server's extensions allow."""
        ext, p, env, source = self.extensions, self._protocol, out.envelope, out.source
        pipelining, chunking = "PIPELINING" in ext, "CHUNKING" in ext
        mail = self._mail_command(out)
        n = len(env.rcpt_to)
        if pipelining:
            batch = self._envelope_commands(out, mail)
            if chunking:  # MAIL, RCPT and the whole message: one round trip
                return self._send_in_one_flight(env, batch, source.chunks)
            batch.append(p.data())
            self._write(b"".join(batch))
            replies = [self._read_reply() for _ in batch]
        else:
            replies = [self._command(mail)]
            if replies[0].is_positive:
                replies += [self._command(p.rcpt(r, dsn=env.dsn)) for r in out.rcpt_to]
        mail_reply, rcpt_replies = replies[0], replies[1 : n + 1]
        data_reply = replies[n + 1] if len(replies) > n + 1 else None
        verdict = judge_envelope(env, mail_reply, rcpt_replies)
        if verdict.failure is not None:
            self._abandon(verdict.failure, data_reply)
        if chunking:
            finals = self._send_chunks(source.chunks, len(verdict.accepted))
        else:
            if data_reply is None:
                data_reply = self._command(p.data())
            if data_reply.code != 354:
                self.reset()
                raise MessageError.from_reply(data_reply, "DATA refused")
            finals = self._send_data(source, len(verdict.accepted))
        return verdict.result(env, finals, lmtp=self.options.lmtp)

    def _send_in_one_flight(
        self, env: Envelope, batch: list[bytes], chunks: Iterator[bytes]
    ) -> SendResult:
        """MAIL, RCPT... and every BDAT chunk, ``LAST`` included, before any reply is needed.

        The commands leave with the first chunk and each chunk follows the previous one
        at once, at most BDAT_WINDOW of them unanswered, so a message of any size takes
        one round trip.  RFC 3030 §4.2: a server discards the chunks pipelined after one
        it refused, ``LAST`` included, and answers each.  LMTP hears every chunk's reply
        before ``LAST``, since how many replies a discarded ``LAST`` gets is not settled
        there.  Once ``LAST`` has left, a lost connection leaves the outcome unknown.
        """
        p = self._protocol
        replies: list[Reply] = []  # MAIL, RCPT..., then one per chunk before LAST
        sent = 0  # chunks before LAST
        head = b"".join(batch)
        chunk = next(chunks, b"")
        failure: SMTPError | None = None
        for following in chunks:
            self._stream(head + p.bdat(chunk))
            head, chunk, sent = b"", following, sent + 1
            failure = self._read_flight_replies(env, replies, sent, BDAT_WINDOW)
            if failure is not None:
                break
        else:
            if self.options.lmtp and sent:
                failure = self._read_flight_replies(env, replies, sent, 0)
        if failure is None:
            try:
                self._stream(head + p.bdat(chunk, last=True))
                failure = self._read_flight_replies(env, replies, sent, 0)
                if failure is None:
                    n = len(env.rcpt_to)
                    verdict = judge_envelope(env, replies[0], replies[1 : n + 1])
                    finals = self._read_verdicts(len(verdict.accepted))
                    return verdict.result(env, finals, lmtp=self.options.lmtp)
            except (ConnectError, SMTPTimeoutError) as exc:
                _lost_after_end_of_data(exc)
                raise
            sent += 1  # the refused LAST is answered too
        for _ in range(len(env.rcpt_to) + 1 + sent - len(replies)):
            self._read_reply()
        self.reset()
        raise failure

    def _read_flight_replies(
        self, env: Envelope, replies: list[Reply], sent: int, keep: int
    ) -> SMTPError | None:
        """Read a flight's replies (MAIL, RCPT..., then one per chunk of the ``sent``)
        into ``replies`` until at most ``keep`` chunks are unanswered (``keep=0``: every
        reply owed); the failure that ends the transaction, as soon as one is heard."""
        expected = len(env.rcpt_to) + 1
        if keep:  # a chunk's reply comes after every MAIL and RCPT reply
            needed = expected + sent - keep if sent > keep else 0
        else:
            needed = expected + sent
        while len(replies) < needed:
            reply = self._read_reply()
            replies.append(reply)
            if len(replies) == expected:
                failure = judge_envelope(env, replies[0], replies[1:]).failure
                if failure is not None:
                    return failure
            elif len(replies) > expected and not reply.is_positive:
                return MessageError.from_reply(reply, "BDAT refused")
        return None

    def _abandon(self, failure: SMTPError, data_reply: Reply | None) -> NoReturn:
        """Give up a transaction refused before its data: close a DATA the server accepted
        anyway (RFC 2920 §3.1), reset the session, and raise ``failure``."""
        if data_reply is not None and data_reply.code == 354:
            self._write(self._protocol.end_data())
            self._read_reply()
        self.reset()
        raise failure

    def reset(self) -> Reply:
        """RSET: return to a clean session (after a transaction failed before its data
        was complete, or when the caller asks)."""
        return self._channel.expect_positive(self._protocol.rset(), "RSET")

    def _send_data(
        self, source: MessageSource, accepted: int, then: Callable[[], bytes] = bytes
    ) -> list[Reply]:
        """Stream the content after 354; the last chunk, the terminator and ``then()``
        (the next transaction's commands, built once this one has ended) share one write."""
        p = self._protocol
        held = b""
        for chunk in source.chunks:
            self._stream(held)
            held = p.send_data(chunk)
        return self._end_data(b"".join([held, p.end_data(), then()]), accepted)

    def _send_chunks(self, chunks: Iterator[bytes], accepted: int) -> list[Reply]:
        """BDAT (CHUNKING) without PIPELINING: each chunk waits for its reply, the last
        one is sent with LAST; a refused chunk resets the session (RFC 3030 §4.2)."""
        p = self._protocol
        chunk = next(chunks, b"")
        for following in chunks:
            self._stream(p.bdat(chunk))
            reply = self._read_reply()
            if not reply.is_positive:
                self.reset()
                raise MessageError.from_reply(reply, "BDAT refused")
            chunk = following
        return self._end_data(p.bdat(chunk, last=True), accepted)

    def _read_verdicts(self, accepted: int) -> list[Reply]:
        """The reply to the end of the data: one per accepted recipient under LMTP."""
        doing = "waiting for the reply to the message"
        if not self.options.lmtp:
            return [self._read_reply(doing=doing)]
        return [self._read_reply(doing=doing) for _ in range(max(accepted, 1))]

    def _end_data(self, end: bytes, accepted: int) -> list[Reply]:
        """Send the end of the data and read the verdict."""
        try:
            self._stream(end)
            return self._read_verdicts(accepted)
        except (ConnectError, SMTPTimeoutError) as exc:
            _lost_after_end_of_data(exc)
            raise

    def _envelope_commands(self, out: Outbound, mail: bytes) -> list[bytes]:
        """``mail`` (from :meth:`_mail_command`) and an RCPT for each recipient."""
        p, dsn = self._protocol, out.envelope.dsn
        return [mail, *(p.rcpt(recipient, dsn=dsn) for recipient in out.rcpt_to)]

    def prepare_envelope(self, item: Outgoing) -> tuple[Outbound, list[bytes]]:
        """The next message of a run, and its MAIL and RCPT commands (one per recipient).

        :raises EnvelopeError: an address needs SMTPUTF8, which the server lacks.
        :raises MessageError: the message is larger than the server's SIZE.
        """
        out = self.prepare(item.content(), Envelope.coerce(item.envelope))
        return out, self._envelope_commands(out, self._mail_command(out))

    def prepare_commands(self, item: Outgoing) -> tuple[Outbound, bytes]:
        """The next message of a run, and its MAIL/RCPT/DATA bytes."""
        out, commands = self.prepare_envelope(item)
        commands.append(self._protocol.data())
        return out, b"".join(commands)

    def send_pipelined(self, out: Outbound, next_commands: Callable[[], bytes]) -> SendResult:
        """One message whose MAIL, RCPT and DATA are already written; the next message's
        (from ``next_commands()``) leave in the same write as this one's end of data."""
        env = out.envelope
        n = len(env.rcpt_to)
        read = self._read_reply
        replies = [read(), read()]  # MAIL, first RCPT
        for _ in range(n):  # the other RCPTs, then DATA
            replies.append(read())
        verdict = judge_envelope(env, replies[0], replies[1 : n + 1])
        data_reply, failure = replies[n + 1], verdict.failure
        if failure is None and data_reply.code != 354:
            failure = MessageError.from_reply(data_reply, "DATA refused")
        if failure is not None:
            self._abandon(failure, data_reply)
        finals = self._send_data(out.source, len(verdict.accepted), next_commands)
        return verdict.result(env, finals, lmtp=self.options.lmtp)
