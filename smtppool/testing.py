"""pytest plugin: a real SMTP server for testing your own mail code.

Installed with smtppool (entry point ``pytest11``), it provides the ``smtp_sink`` fixture:
an in-process ``aiosmtpd`` server on a free loopback port, started per test, with the
messages it received parsed into :class:`~email.message.EmailMessage` objects beside
their envelopes, and ``smtp_sink.url`` ready for :meth:`SMTPPool.from_url`::

    def test_welcome_mail(smtp_sink):
        transport = smtppool.SMTPPool.from_url(smtp_sink.url)
        signup("ann@example.org", transport)        # your code
        [sent] = smtp_sink.messages
        assert sent.envelope.rcpt_to == ("ann@example.org",)
        assert sent["Subject"] == "Welcome"

``smtp_sink_factory(**options)`` starts more sinks with :class:`smtppool.sink.Sink`
options (TLS contexts, credentials, which it accepts over plaintext loopback too,
extensions, refused recipients; an unknown option is a ``TypeError``).  Needs ``aiosmtpd``
(``pip install 'smtppool[sink]'``), imported only when a fixture is used.
"""

from __future__ import annotations

import email.policy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from .envelope import Envelope
from .sink import ReceivedMessage, Sink

__all__ = ["CapturedMessage", "SinkFixture"]


@dataclass(frozen=True)
class CapturedMessage:
    """One message the sink accepted: its envelope, parsed message and raw bytes."""

    envelope: Envelope
    message: EmailMessage
    raw: bytes

    @property
    def mail_from(self) -> str:
        """The envelope sender, as :class:`smtppool.sink.ReceivedMessage` has it."""
        return self.envelope.mail_from

    @property
    def rcpt_tos(self) -> tuple[str, ...]:
        """The envelope recipients, as :class:`smtppool.sink.ReceivedMessage` has them."""
        return tuple(self.envelope.rcpt_to)

    def __getitem__(self, header: str) -> Any:
        """Header access straight through to the message (``captured["Subject"]``)."""
        return self.message[header]

    @classmethod
    def from_received(cls, received: ReceivedMessage) -> CapturedMessage:
        # The email package works with \n line ends; raw keeps the CRLF wire bytes.
        text = received.data.replace(b"\r\n", b"\n")
        parsed = BytesParser(policy=email.policy.default).parsebytes(text)
        assert isinstance(parsed, EmailMessage)
        return cls(received.envelope, parsed, received.data)


class SinkFixture:
    """What ``smtp_sink`` yields: a running sink and what it has received so far."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    @property
    def host(self) -> str:
        return self.sink.host

    @property
    def port(self) -> int:
        return self.sink.port

    @property
    def url(self) -> str:
        """``smtp://127.0.0.1:PORT`` (``smtps://`` or ``lmtp://`` as configured)."""
        return self.sink.url

    @property
    def messages(self) -> list[CapturedMessage]:
        return [CapturedMessage.from_received(m) for m in list(self.sink.messages)]

    def clear(self) -> None:
        self.sink.messages.clear()

    def __repr__(self) -> str:
        return f"<smtp_sink {self.url} messages={len(self.sink.messages)}>"


@pytest.fixture
def smtp_sink_factory() -> Iterator[Callable[..., SinkFixture]]:
    """Start sinks with :class:`smtppool.sink.Sink` options; all stop after the test."""
    started: list[Sink] = []

    def start(**options: Any) -> SinkFixture:
        sink = Sink(**options).start()
        started.append(sink)
        return SinkFixture(sink)

    yield start
    for sink in started:
        sink.stop()


@pytest.fixture
def smtp_sink(smtp_sink_factory: Callable[..., SinkFixture]) -> SinkFixture:
    """A real SMTP server on a free loopback port, recording what it receives."""
    return smtp_sink_factory()
