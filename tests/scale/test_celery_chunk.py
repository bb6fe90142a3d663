"""The Celery task's work on one chunk (send_chunk), with a real Redis and no worker:
each message's outcome and its idempotency record agree with what the server saw."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from smtppool import SMTPPool
from smtppool.contrib.celery import _Records, encode, send_chunk

from ..faults import Faults, FaultServer
from ..servers import ScriptedServer, expect, hello, sleep
from .conftest import RedisServer


def item(index: int) -> dict[str, Any]:
    raw = (
        f"From: app@example.test\r\nTo: u{index}@example.test\r\n"
        f"Message-ID: <c{index}@example.test>\r\n\r\nmessage {index}\r\n"
    ).encode()
    envelope = {"from": "app@example.test", "to": [f"u{index}@example.test"]}
    return encode(raw, envelope)


@pytest.fixture
def records(redis_server: RedisServer) -> Iterator[_Records]:
    client = redis.Redis.from_url(redis_server.url)
    yield _Records(client, "test")
    client.close()


def state(records: _Records, key: str) -> str | None:
    value = records.client.get(records._name(key))
    return value.decode() if isinstance(value, bytes) else None


def test_a_timeout_before_the_data_is_retried_not_reported_unknown(
    records: _Records, scripted: Any
) -> None:
    """On Python 3.11+ SMTPTimeoutError is a concurrent.futures.TimeoutError: the task
    used to take a reply timeout for its own wait running out, and reported a message
    nothing was sent of as delivery_unknown, its record stuck at "sending"."""
    server: ScriptedServer = scripted([*hello(), expect(b"MAIL"), sleep(1.5)])
    pool = SMTPPool(host=server.host, port=server.port, socket_timeout=0.5, retries=0)
    try:
        outcomes, again = send_chunk(pool, records, [item(1)])
    finally:
        pool.close(wait=False)
    assert outcomes == [] and [i["key"] for i in again] == ["<c1@example.test>"]
    assert state(records, "<c1@example.test>") is None  # free to be sent again


def test_a_bad_item_fails_alone(records: _Records) -> None:
    # encode() refuses these; a chunk may still carry them (hand-built JSON, say)
    bad = {**item(2), "to": ["u2@example.test\r\nRCPT TO:<victim@example.test>"]}
    garbled = {**item(3), "raw": "not base64!"}
    with FaultServer() as server, SMTPPool(host=server.host, port=server.port) as pool:
        outcomes, again = send_chunk(pool, records, [item(1), bad, garbled, item(4)])
    statuses = {o["key"]: o["status"] for o in outcomes}
    assert statuses == {
        "<c1@example.test>": "sent",
        "<c2@example.test>": "failed",
        "<c3@example.test>": "failed",
        "<c4@example.test>": "sent",
    }
    assert again == []
    errors = {o["key"]: o["error"] or "" for o in outcomes}
    assert "forbidden character" in errors["<c2@example.test>"]
    assert sorted(m.message_id or "" for m in server.received) == [
        "<c1@example.test>",
        "<c4@example.test>",
    ]
    assert state(records, "<c1@example.test>") == state(records, "<c4@example.test>") == "sent"
    assert state(records, "<c2@example.test>") is None  # never marked: never sent


def test_an_item_without_a_key_or_not_a_mapping_fails_alone(records: _Records) -> None:
    """The task used to read every item's key before checking the item: a keyless one
    was sent with no record, and one that was not a mapping stopped the chunk."""
    keyless = {k: v for k, v in item(2).items() if k != "key"}
    chunk: list[Any] = [item(1), keyless, ["not", "a", "mapping"], item(4)]
    with FaultServer() as server, SMTPPool(host=server.host, port=server.port) as pool:
        outcomes, again = send_chunk(pool, records, chunk)
    assert sorted((o["key"], o["status"]) for o in outcomes) == [
        ("", "failed"),
        ("", "failed"),
        ("<c1@example.test>", "sent"),
        ("<c4@example.test>", "sent"),
    ]
    errors = " | ".join(o["error"] or "" for o in outcomes if o["status"] == "failed")
    assert "no key" in errors and "list, not a mapping" in errors
    assert again == []
    assert sorted(m.message_id or "" for m in server.received) == [
        "<c1@example.test>",
        "<c4@example.test>",
    ]


class SoftTimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised into the task's wait."""


def test_an_interruption_propagates_and_leaves_the_pending_records_sending(
    records: _Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time limit or shutdown raised into the wait for an outcome is not that
    message's outcome: the task used to report the message "failed" and forget its
    record, though the pool may still deliver it, so a retry would send it twice."""
    with FaultServer() as server, SMTPPool(host=server.host, port=server.port) as pool:

        def interrupted(*args: object, **kwargs: object) -> object:
            raise SoftTimeLimit("time's up")

        monkeypatch.setattr(pool, "result", interrupted)
        with pytest.raises(SoftTimeLimit):
            send_chunk(pool, records, [item(i) for i in range(3 * pool.options.max_connections)])
    assert len(server.received) >= 1
    for message in server.received:  # handed to the pool: its fate is unknown to the task
        assert state(records, message.message_id or "") == "sending"


def test_records_stay_sending_only_when_the_fate_is_unknown(records: _Records) -> None:
    faults = Faults(drop=1.0, drop_stages=("dot",))  # every message received, unanswered
    with FaultServer(faults) as server, SMTPPool(host=server.host, port=server.port) as pool:
        outcomes, again = send_chunk(pool, records, [item(1)])
    assert [o["status"] for o in outcomes] == ["delivery_unknown"] and again == []
    assert state(records, "<c1@example.test>") == "sending"  # never sent again
    assert len(server.received) == 1
    refused = Faults(refuse=1.0, refuse_reply=b"554 5.7.1 no SMTP service here")
    with FaultServer(refused) as server, SMTPPool(host=server.host, port=server.port) as pool:
        outcomes, again = send_chunk(pool, records, [item(2)])
    assert [o["status"] for o in outcomes] == ["failed"] and again == []
    assert state(records, "<c2@example.test>") is None


def test_a_chunk_through_a_capped_flaky_server(records: _Records) -> None:
    """Two sessions at most, 421 to a fifth of the connections, 3 % of transactions cut:
    each message is sent, retried later, or unknown, and its record says the same."""
    faults = Faults(cap=2, refuse=0.2, drop=0.03, seed=7)
    items = [item(i) for i in range(200)]
    with FaultServer(faults) as server, SMTPPool(host=server.host, port=server.port) as pool:
        outcomes, again = send_chunk(pool, records, items)
        assert pool.stats()["connection_limit"] <= 2
    counts = server.message_counts()
    seen = {o["key"] for o in outcomes} | {i["key"] for i in again}
    assert seen == {i["key"] for i in items} and len(outcomes) + len(again) == 200
    for outcome in outcomes:
        key = outcome["key"]
        if outcome["status"] == "sent":
            assert counts.get(key) == 1 and state(records, key) == "sent"
        else:
            assert outcome["status"] == "delivery_unknown", outcome
            assert counts.get(key, 0) <= 1 and state(records, key) == "sending"
    for retry in again:
        assert counts.get(retry["key"], 0) == 0 and state(records, retry["key"]) is None
    assert sum(o["status"] == "sent" for o in outcomes) >= 190
    assert base64.b64decode(items[0]["raw"]).startswith(b"From:")
