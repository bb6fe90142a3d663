"""Handshake: opening a session, from the first byte to a READY (or HELLO) state.

Dial (or adopt a given socket), implicit TLS, the greeting, EHLO (HELO when refused),
STARTTLS and EHLO again.  Under ``opportunistic_tls`` a STARTTLS the server refuses, or
a handshake that fails after it was accepted, lets the session go on in plaintext
(redialling for the latter), and :attr:`Handshake.tls_fallback` says why.
"""

from __future__ import annotations

import socket
import ssl
import time

from .channel import Channel
from .errors import ConnectError, ProtocolError, TLSError
from .protocol import State
from .transport import local_fqdn

__all__ = ["Handshake"]


class Handshake:
    """Opens one session on ``channel``; records the TLS it ended with."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.options = channel.options
        #: "implicit" or "STARTTLS" once TLS is up, else None.
        self.tls_mode: str | None = None
        #: Why the session went on without the TLS the server offered, else None.
        self.tls_fallback: str | None = None

    def run(self, given: socket.socket | None) -> None:
        """Open the session (on ``given`` when not None, else dialling)."""
        opts = self.options
        try:
            self._open(given, starttls=not opts.ignore_tls)
        except ssl.SSLError as exc:  # raw handshake errors and our TLSError alike
            # A handshake that failed after STARTTLS was accepted: opportunistic_tls
            # means the caller prefers plaintext to no mail, so dial again without it.
            after_starttls = not opts.secure and self.tls_mode is None
            if not (
                opts.opportunistic_tls
                and after_starttls
                and given is None
                and self.channel.protocol.state == State.HELLO
            ):
                if after_starttls and not isinstance(exc, TLSError):  # the handshake
                    raise TLSError(
                        f"TLS failure in STARTTLS: {exc} (trust the server's certificate "
                        "with tls={'cafile': ...}, or allow a plaintext retry with "
                        "opportunistic_tls=True)"
                    ) from exc
                raise
            self.channel.transport.close()
            self._open(None, starttls=False)
            self._fall_back_to_plaintext(f"the TLS handshake failed: {exc}")

    def _open(self, given: socket.socket | None, *, starttls: bool) -> None:
        opts, channel = self.options, self.channel
        channel.restart()
        self.tls_mode = self.tls_fallback = None
        deadline = time.monotonic() + opts.connection_timeout
        channel.transport.open(deadline, given)
        if opts.secure:
            self._start_tls(deadline, "implicit")
        greeting = channel.read_reply(
            time.monotonic() + opts.greeting_timeout, "waiting for the greeting"
        )
        if greeting.code != 220:
            raise ConnectError.from_reply(greeting, "server refused the session")
        self._hello()
        if starttls and not opts.secure:
            self._starttls()

    def _start_tls(self, deadline: float, mode: str) -> None:
        self.channel.transport.start_tls(deadline)
        self.tls_mode = mode

    def _hello(self) -> None:
        opts, channel = self.options, self.channel
        name = opts.name or local_fqdn()
        if "." not in name or not name.isascii():
            name = channel.transport.address_literal()
        reply = channel.command(channel.protocol.ehlo(name))
        if not reply.is_positive and not opts.lmtp:
            reply = channel.command(channel.protocol.helo(name))
        if not reply.is_positive:
            raise ProtocolError.from_reply(reply, "server refused EHLO and HELO")

    def _starttls(self) -> None:
        opts, channel = self.options, self.channel
        if "STARTTLS" not in channel.extensions:
            if opts.require_tls:
                raise TLSError("STARTTLS extension not supported by server. (require_tls is set)")
            return
        reply = channel.command(channel.protocol.starttls())
        if reply.code != 220:
            if opts.opportunistic_tls:
                self._fall_back_to_plaintext(f"the server refused STARTTLS: {reply}")
                return
            raise TLSError.from_reply(reply, "server refused STARTTLS")
        self._start_tls(time.monotonic() + opts.connection_timeout, "STARTTLS")
        self._hello()

    def _fall_back_to_plaintext(self, reason: str) -> None:
        """Record and log (at WARNING, every time) a session going on without the TLS
        the server offered, as ``opportunistic_tls`` allows."""
        self.tls_fallback = reason
        self.channel.log.warning(
            "%s:%s: continuing WITHOUT TLS (opportunistic_tls): %s",
            self.options.host,
            self.options.port,
            reason,
        )
