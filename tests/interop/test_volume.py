"""A batch the size of a real cron job through Postfix, counted in its Maildir."""

from __future__ import annotations

import pytest

from smtppool import Envelope, SendResult, SMTPPool

from .servers import MailServer
from .test_features import ALICE, SENDER, make_message, settings, stored_each_once


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.feature("pool, 2,000 messages exactly once")
@pytest.mark.parametrize("server", ["postfix"], indirect=True)
def test_two_thousand_messages_through_postfix(server: MailServer) -> None:
    messages = [make_message(b"message %d of 2000\r\n" % i) for i in range(2000)]
    with SMTPPool(**settings(server), max_connections=5) as pool:
        outcomes = list(pool.send_many((m, Envelope(SENDER, [ALICE])) for m in messages))
        stats = pool.stats()
    failures = [outcome for outcome in outcomes if not isinstance(outcome, SendResult)]
    assert failures == []
    assert stats["sent"] == 2000
    # Sessions end at max_messages (100), and the 5 still open when the batch ends.
    assert stats["connections_opened"] <= 2000 // 100 + 5
    stored_each_once(server, ALICE, messages)
