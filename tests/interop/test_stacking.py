"""Stacked CHUNKING transactions against real Postfix and Exim: a large batch exactly
once and byte for byte, several transactions to a write, and refusals in the middle of
a stack reported on the right messages."""

from __future__ import annotations

import pytest

from smtppool import Envelope, EnvelopeError, SendResult, SMTPConnection, SMTPPool

from .servers import DOMAIN, REFUSED_SENDER, MailServer
from .test_features import ALICE, BOB, SENDER, Recorder, make_message, settings, stored_each_once

STACKING_SERVERS = ["postfix", "exim"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.feature("stacked CHUNKING, 2,000 messages exactly once")
@pytest.mark.parametrize("server", STACKING_SERVERS, indirect=True)
def test_two_thousand_stacked_messages_exactly_once(server: MailServer) -> None:
    recorder = Recorder()
    messages = [make_message(b"stacked message %d of 2000\r\n" % i) for i in range(2000)]
    options = settings(server, tls=False, get_socket=recorder)
    with SMTPPool(**options, max_connections=5, stack_messages=16) as pool:
        outcomes = list(pool.send_many((m, Envelope(SENDER, [ALICE])) for m in messages))
        stats = pool.stats()
    assert [o for o in outcomes if not isinstance(o, SendResult)] == []
    assert stats["sent"] == 2000
    per_write = [w.count(b"MAIL FROM:") for w in recorder.writes if b"MAIL FROM:" in w]
    assert sum(per_write) == 2000
    assert max(per_write) == 16  # a full window in one write
    assert sum(per_write) / len(per_write) > 2  # several transactions per write
    stored_each_once(server, ALICE, messages)


@pytest.mark.feature("stacked CHUNKING, refusals mid-stack")
@pytest.mark.parametrize("server", STACKING_SERVERS, indirect=True)
def test_refusals_in_a_stack_land_on_their_own_messages(server: MailServer) -> None:
    """Twelve messages in one stack: the fourth has a refused sender, the seventh only
    an unknown recipient, the ninth one unknown and one good recipient."""
    recorder = Recorder()
    envelopes = [Envelope(SENDER, [ALICE]) for _ in range(12)]
    envelopes[3] = Envelope(REFUSED_SENDER, [ALICE])
    envelopes[6] = Envelope(SENDER, [f"nobody@{DOMAIN}"])
    envelopes[8] = Envelope(SENDER, [f"nobody@{DOMAIN}", BOB])
    messages = [make_message(b"stack position %d\r\n" % i) for i in range(12)]

    class Item:
        def __init__(self, index: int) -> None:
            self.envelope, self.index = envelopes[index], index

        def content(self) -> bytes:
            return messages[self.index]

    with SMTPConnection(**settings(server, tls=False, get_socket=recorder)) as conn:
        outcomes = [o for _, o in conn.send_each(iter([Item(i) for i in range(12)]))]
    assert max(w.count(b"MAIL FROM:") for w in recorder.writes) == 12  # one stack
    sender_refused, nobody = outcomes[3], outcomes[6]
    assert isinstance(sender_refused, EnvelopeError), sender_refused
    assert sender_refused.response_code == 553 if server.name == "postfix" else 550
    assert "sender refused here" in (sender_refused.response or "")
    assert isinstance(nobody, EnvelopeError) and "every recipient" in nobody.message
    partial = outcomes[8]
    assert isinstance(partial, SendResult)
    assert (partial.accepted, partial.rejected) == ([BOB], [f"nobody@{DOMAIN}"])
    good = [i for i in range(12) if i not in (3, 6, 8)]
    assert all(isinstance(outcomes[i], SendResult) for i in good), outcomes
    stored_each_once(server, ALICE, [messages[i] for i in good])
    stored_each_once(server, BOB, [messages[8]])
