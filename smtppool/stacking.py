"""Stacked CHUNKING transactions: several messages in flight on one connection.

With CHUNKING there is no 354 to wait for, so on a server that also offers PIPELINING
the next message's MAIL, RCPT and ``BDAT n LAST`` may follow the previous message's last
chunk at once.  A :class:`StackedRun` keeps up to ``stack_messages`` transactions (and
``stack_bytes`` of commands and content) written ahead of their replies, several to a
write, and reads replies while it writes (:meth:`~smtppool.channel.Channel.write_reading`),
so a server that stops reading until its replies are read cannot stall it; every wait
keeps its deadline.  Each transaction is followed by a pipelined RSET: whatever a server
does after a refused transaction (RFC 3030 does not say whether a refused ``BDAT LAST``
ends it), the next one starts clean, and a server discards the chunks pipelined after
one it refused (RFC 3030 §4.2).

Replies are matched to transactions in order, and each message's outcome comes from its
own replies: a refused sender or recipient fails that message only.  When the connection
is lost, a message whose ``BDAT LAST`` left (the kernel took it) without a verdict is
``delivery_unknown``; one whose end never left gets a :class:`ConnectError` without it,
and may be retried.  The next item is taken from the run's iterator only when the window
has room for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic

from .channel import Channel
from .envelope import SendResult
from .errors import ConnectError, EnvelopeError, MessageError, ProtocolError, SMTPError
from .protocol import Reply
from .transaction import EnvelopeVerdict, Item, Outbound, Sender, judge_envelope

__all__ = ["WRITE_BYTES", "StackedRun"]

#: A write is sent once it holds this much (several small transactions share one).
WRITE_BYTES = 64 * 1024

# What a reply answers: MAIL or RCPT, a chunk, the last chunk, the RSET after a message.
_ENVELOPE, _CHUNK, _LAST, _RSET = range(4)


class _Transaction(Generic[Item]):
    """One message of the stack: what has been written of it and what came back."""

    __slots__ = ("chunk", "chunks", "item", "last_at", "out", "outcome", "replies", "verdict")

    def __init__(self, item: Item, out: Outbound | None = None) -> None:
        self.item = item
        self.out = out
        self.chunks: Iterator[bytes] | None = None if out is None else out.source.chunks
        self.chunk: bytes | None = None  # read ahead, to know which chunk is the last
        self.replies: list[Reply] = []  # MAIL and RCPT replies, until they are judged
        self.verdict: EnvelopeVerdict | None = None
        self.outcome: SendResult | SMTPError | None = None
        #: ``bytes_sent`` of the transport once its ``BDAT LAST`` has left, when written.
        self.last_at: int | None = None

    def next_chunk(self) -> tuple[bytes, bool]:
        """The next piece of content and whether it is the last one."""
        assert self.chunks is not None
        chunk = next(self.chunks, b"") if self.chunk is None else self.chunk
        self.chunk = next(self.chunks, None)
        return chunk, self.chunk is None


class StackedRun(Generic[Item]):
    """Iterate to send ``items`` on a READY CHUNKING and PIPELINING session, up to
    ``stack_messages`` at once; yields ``(item, outcome)`` in order."""

    def __init__(self, channel: Channel, sender: Sender, items: Iterator[Item]) -> None:
        self._channel = channel
        self._sender = sender
        self._items = items
        self._max_messages = channel.options.stack_messages
        self._max_bytes = channel.options.stack_bytes
        self._queue: deque[_Transaction[Item]] = deque()  # taken, outcome not yet yielded
        #: One entry per command written and not yet answered, in order: its message,
        #: its size (for the window in bytes), and what it is.
        self._owed: deque[tuple[_Transaction[Item], int, int]] = deque()
        self._owed_bytes = 0
        self._current: _Transaction[Item] | None = None  # its content still going out
        self._exhausted = False
        self._pieces: list[bytes] = []  # the next write, and its length so far
        self._size = 0
        self._ends: list[tuple[_Transaction[Item], int]] = []  # each LAST's end in it
        #: What taking or preparing the next item raised (not a refusal of its own),
        #: raised out of the run once the messages in flight are done.
        self._raised: Exception | None = None

    # -- writing -------------------------------------------------------------------------

    def _take_next(self) -> _Transaction[Item] | None:
        """The next item as a transaction, its commands built; None when there is none.
        An item refused by a check that needs no reply comes with its outcome."""
        try:
            item = next(self._items, None)
            if item is None:
                self._exhausted = True
                return None
            try:
                out, commands = self._sender.prepare_envelope(item)
            except (EnvelopeError, MessageError) as exc:
                refused: _Transaction[Item] = _Transaction(item)
                refused.outcome = exc
                self._queue.append(refused)
                return refused
        except Exception as exc:  # the item's own trouble (an unreadable file, say)
            self._raised, self._exhausted = exc, True
            return None
        txn = _Transaction(item, out)
        self._queue.append(txn)
        for command in commands:
            self._add(txn, command, _ENVELOPE)
        return txn

    def _add(self, txn: _Transaction[Item], command: bytes, kind: int) -> None:
        """Put ``command`` (with its content, for BDAT) in the next write, and owe its reply."""
        size = len(command)
        self._owed.append((txn, size, kind))
        self._owed_bytes += size
        self._pieces.append(command)
        self._size += size

    def _content(self, txn: _Transaction[Item]) -> None:
        """The current message's next chunk (and its RSET after the last), or just the
        RSET when it has failed: RFC 3030 says no more of its chunks may follow."""
        protocol = self._channel.protocol
        if txn.outcome is None:
            try:
                chunk, last = txn.next_chunk()
            except Exception as exc:  # its content cannot be read: abandon it
                failure = MessageError(f"could not read the message: {exc!r}")
                failure.__cause__ = exc
                txn.outcome = failure
            else:
                self._add(txn, protocol.bdat(chunk, last=last), _LAST if last else _CHUNK)
                if not last:
                    return
                self._ends.append((txn, self._size))
        self._add(txn, protocol.rset(), _RSET)
        self._current = None

    def _fill(self) -> None:
        """Write what the window has room for: the current message's next chunks, then
        new messages, several to a write."""
        while True:
            txn = self._current
            if txn is None:
                if (
                    self._exhausted
                    or len(self._queue) >= self._max_messages
                    or self._owed_bytes >= self._max_bytes
                ):
                    break
                txn = self._take_next()
                if txn is None or txn.out is None:
                    continue
                self._current = txn
            elif txn.outcome is None and self._owed_bytes >= self._max_bytes:
                break
            self._content(txn)
            if self._size >= WRITE_BYTES:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        """Write the pieces gathered; note where each ``BDAT LAST`` in them ends."""
        pieces, ends = self._pieces, self._ends
        if not pieces:
            return
        transport = self._channel.transport
        base = transport.bytes_sent
        self._pieces, self._ends, self._size = [], [], 0
        try:
            self._channel.write_reading(b"".join(pieces))
        finally:
            for txn, end in ends:
                txn.last_at = base + end

    # -- reading -------------------------------------------------------------------------

    def _take(self, reply: Reply) -> None:
        """Give ``reply`` to the transaction whose command it answers."""
        txn, size, kind = self._owed.popleft()
        self._owed_bytes -= size
        if kind == _RSET:
            if not reply.is_positive:
                raise ProtocolError.from_reply(reply, "RSET refused")
            return
        if txn.outcome is not None:  # refused earlier: the server discards the rest
            return
        out = txn.out
        assert out is not None
        env = out.envelope
        if kind == _ENVELOPE:
            replies = txn.replies
            replies.append(reply)
            if len(replies) > len(env.rcpt_to):  # MAIL and every RCPT answered
                verdict = judge_envelope(env, replies[0], replies[1:])
                txn.verdict, txn.outcome = verdict, verdict.failure
        elif kind == _CHUNK:
            if not reply.is_positive:
                txn.outcome = MessageError.from_reply(reply, "BDAT refused")
        else:
            assert txn.verdict is not None
            try:
                txn.outcome = txn.verdict.result(env, [reply], lmtp=False)
            except MessageError as exc:
                txn.outcome = exc

    def _take_received(self) -> None:
        """Take every reply already received, without waiting."""
        channel, owed = self._channel, self._owed
        while owed and (reply := channel.received_reply()) is not None:
            self._take(reply)

    def _settled(self) -> Iterator[tuple[Item, SendResult | SMTPError]]:
        queue = self._queue
        while queue and (outcome := queue[0].outcome) is not None:
            yield queue.popleft().item, outcome

    # -- the run -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Item, SendResult | SMTPError]]:
        channel = self._channel
        with channel.guard("sending messages"):
            channel.require_ready()
        try:
            while True:
                yield from self._settled()  # first: a settled message leaves the window
                self._fill()
                if self._owed:
                    self._take(channel.read_reply(doing="waiting for the replies to messages"))
                    self._take_received()
                elif self._exhausted and self._current is None and not self._queue:
                    break
        except SMTPError as exc:  # the session is lost: each message in flight learns how
            channel.transport.close()
            self._lost(exc)
            yield from self._settled()
            return
        except BaseException:
            channel.transport.close()
            raise
        self._raise_pending()

    def _lost(self, exc: SMTPError) -> None:
        """Settle every message in flight after ``exc`` ended the session: replies that
        arrived before it count; a 421 is the answer of the command it came for; a
        message whose ``BDAT LAST`` left without a verdict is ``delivery_unknown``; the
        others never reached their end and may be sent again."""
        owed = self._owed
        if exc.response_code == 421 and owed:  # the server's answer to the oldest command
            owner = owed.popleft()[0]
            if owner.outcome is None:
                owner.outcome = exc
        else:
            try:
                while owed and (reply := self._channel.protocol.next_reply()) is not None:
                    self._take(reply)
            except SMTPError:  # a garbled reply: the ones before it are taken
                pass
        sent = self._channel.transport.bytes_sent
        for txn in self._queue:
            if txn.outcome is None:
                if txn.last_at is not None and txn.last_at <= sent:
                    txn.outcome = type(exc)(exc.message, delivery_unknown=True)
                else:
                    txn.outcome = ConnectError(
                        f"connection lost before this message was sent ({exc.message})"
                    )

    def _raise_pending(self) -> None:
        """Raise what taking or preparing an item raised, once the others are done."""
        if self._raised is not None:
            raise self._raised
