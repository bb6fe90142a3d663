"""Login: the AUTH exchange on an open session.

Refuses to send credentials in plaintext to a host that is not loopback (unless
allowed), picks the SASL mechanism (:func:`~smtppool.auth.choose_mechanism`), answers
the server's challenges, and refreshes a rejected OAuth2 token once.
"""

from __future__ import annotations

from .auth import Credentials, choose_mechanism, make_mechanism
from .channel import Channel
from .errors import AuthenticationError, ProtocolError
from .oauth2 import OAuth2
from .protocol import decode_challenge
from .replies import Reply

__all__ = ["MAX_AUTH_ROUNDS", "log_in"]

#: Most 334 challenges accepted in one AUTH exchange.
MAX_AUTH_ROUNDS = 10


def log_in(channel: Channel, credentials: Credentials | OAuth2, *, secure: bool) -> str:
    """Authenticate on a READY session (``secure`` when it runs over TLS); returns the
    mechanism used.

    :raises AuthenticationError: refused, no suitable mechanism, or credentials would
        travel in plaintext to a host that is not loopback.
    """
    opts = channel.options
    plaintext_ok = opts.allow_plaintext_auth or channel.transport.on_loopback()
    if not secure and not plaintext_ok:
        raise AuthenticationError(
            f"refusing to send credentials to {opts.host} over an unencrypted "
            "connection; use TLS (secure=True or STARTTLS) or allow_plaintext_auth=True"
        )
    if "AUTH" not in channel.extensions:  # smtplib's wording, familiar to its users
        raise AuthenticationError(
            "SMTP AUTH extension not supported by server."
            + ("" if secure else " (Some servers offer it only after STARTTLS.)")
        )
    method = choose_mechanism(
        channel.extensions.auth_mechanisms,
        oauth2=isinstance(credentials, OAuth2),
        forced=opts.auth_method,
    )
    reply = _login_with(channel, method, credentials)
    if reply.code != 235:
        raise AuthenticationError.from_reply(reply, f"AUTH {method} failed")
    return method


def _login_with(channel: Channel, method: str, credentials: Credentials | OAuth2) -> Reply:
    if isinstance(credentials, Credentials):
        return _sasl(channel, method, credentials.user, credentials.password)
    token = credentials.get_token()
    reply = _sasl(channel, method, credentials.user, token)
    if reply.code != 235 and credentials.can_refresh:  # a revoked token: refresh once
        channel.log.info("XOAUTH2 token for %s rejected; refreshing once", credentials.user)
        reply = _sasl(channel, method, credentials.user, credentials.refresh(rejected=token))
    return reply


def _sasl(channel: Channel, method: str, user: str, secret: str) -> Reply:
    mechanism = make_mechanism(method, user, secret)
    protocol = channel.protocol
    reply = channel.command(protocol.auth(method, mechanism.initial_response()))
    for _ in range(MAX_AUTH_ROUNDS):
        if reply.code != 334:
            return reply
        answer = mechanism.respond(decode_challenge(reply))
        reply = channel.command(protocol.auth_continue(answer))
    raise ProtocolError(f"AUTH {method}: more than {MAX_AUTH_ROUNDS} challenges")
