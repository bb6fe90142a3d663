"""Pipelining across transactions: a run of messages at one round trip each.

On a PIPELINING server using DATA, each message's content and end of data go out in the
same write as the next message's MAIL, RCPT and DATA (RFC 2920 lets the content
transfer open a group), so a busy session costs one write and one round trip per
message.  The next item is taken from the run's iterator only when its commands can
leave; an item refused by a check that needs no reply (SMTPUTF8, SIZE) comes back at
once, and the item announced behind a lost end of data comes back with a
:class:`ConnectError` without ``delivery_unknown`` (its data never left), so it may be
retried.  Anything else preparing an item raises (out of the run) once the message
under way has its outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic

from .channel import FATAL, Channel
from .envelope import SendResult
from .errors import ConnectError, EnvelopeError, MessageError, SMTPError
from .transaction import Item, Outbound, Sender

__all__ = ["PipelinedRun"]


class _Prepared(Generic[Item]):
    """An item whose MAIL, RCPT and DATA are built (and maybe written)."""

    __slots__ = ("commands", "item", "out")

    def __init__(self, item: Item, out: Outbound, commands: bytes):
        self.item, self.out, self.commands = item, out, commands


class PipelinedRun(Generic[Item]):
    """Iterate to send ``items`` on a READY session; yields ``(item, outcome)`` in order."""

    def __init__(self, channel: Channel, sender: Sender, items: Iterator[Item]) -> None:
        self._channel = channel
        self._sender = sender
        self._items = items
        self._refused: list[tuple[Item, SMTPError]] = []  # by checks that need no reply
        self._following: list[_Prepared[Item]] = []  # announced behind the current one
        #: What preparing the next item raised (its file unreadable, say), kept until
        #: the message under way is done: it is that item's, raised out of the run.
        self._raised: Exception | None = None

    def _prepare(self) -> _Prepared[Item] | None:
        for item in self._items:
            try:
                return _Prepared(item, *self._sender.prepare_commands(item))
            except (EnvelopeError, MessageError) as exc:
                self._refused.append((item, exc))
        return None

    def _write_next(self) -> _Prepared[Item] | None:
        """Start the next transaction on its own (nothing is under way).  Preparing it
        does no I/O and stays outside the guard: its errors are the item's own."""
        channel = self._channel
        with channel.guard("sending messages"):
            channel.require_ready()
        prepared = self._prepare()
        if prepared is not None:
            with channel.guard("sending messages"):
                channel.write(prepared.commands)
        return prepared

    def _next_commands(self) -> bytes:
        """The next transaction's commands, to ride with the current end of data."""
        try:
            prepared = self._prepare()
        except Exception as exc:  # not the current message's failure: it goes on
            self._raised = exc
            return b""
        if prepared is None:
            return b""
        self._following.append(prepared)
        return prepared.commands

    def __iter__(self) -> Iterator[tuple[Item, SendResult | SMTPError]]:
        channel, following = self._channel, self._following
        current = self._write_next()
        while True:
            yield from self._refused
            self._refused.clear()
            self._raise_pending()
            if current is None:
                return
            following.clear()
            try:
                result = self._sender.send_pipelined(current.out, self._next_commands)
            except SMTPError as exc:
                if isinstance(exc, FATAL):
                    channel.transport.close()
                yield current.item, exc
                if channel.transport.sock is None:
                    yield from self._refused
                    if following:  # its commands went out, its data never did
                        lost = ConnectError("connection lost before this message was sent")
                        yield following[0].item, lost
                    break
                # Refused at the end of data, the next one is under way; before its data,
                # nothing is: the next one starts now (unless preparing one raised).
                if following:
                    current = following[0]
                else:
                    current = None if self._preparing_failed() else self._write_next()
                continue
            except BaseException:
                channel.transport.close()
                raise
            yield current.item, result
            current = following[0] if following else None
        self._raise_pending()

    # Read through methods: ``_next_commands`` sets ``_raised`` during a call, and a check
    # in ``__iter__`` would narrow its type there (mypyc compiles in the narrowed type).

    def _preparing_failed(self) -> bool:
        return self._raised is not None

    def _raise_pending(self) -> None:
        """Raise what preparing the next item raised, once the current one is over."""
        if self._raised is not None:
            raise self._raised
