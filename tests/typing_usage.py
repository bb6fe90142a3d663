"""Type-checked (not run) use of the public API from a user's side: mypy checks this file."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

import smtppool


def usage() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    conn = smtppool.SMTPConnection(
        host="smtp.example.com",
        port=587,
        auth=("user", "pw"),
        tls=ssl.create_default_context(),
        socket_timeout=30.0,
    )
    with conn:
        result: smtppool.SendResult = conn.send(
            smtppool.Envelope("a@example.com", ["b@example.com"], dsn=smtppool.DSN(ret="HDRS")),
            message,
        )
        accepted: list[str] = result.accepted
        errors: list[smtppool.SMTPError] = result.rejected_errors
        print(accepted, errors, result.response, conn.extensions.size, conn.secure)
        conn.send({"from": "a@example.com", "to": "b@example.com"}, b"raw bytes")
        conn.send({"from": "a@example.com", "to": "b@example.com"}, open("m.eml", "rb"))
    stream = conn.send_stream(
        ({"from": "a@example.com", "to": "b@example.com"}, b"one"), lambda: None
    )
    for outcome in stream:
        if isinstance(outcome, smtppool.SMTPError):
            print(outcome.delivery_unknown)
        else:
            print(outcome.response)
    pool = smtppool.SMTPPool(options=smtppool.Options(host="localhost"), max_connections=2)
    future = pool.submit(message)
    result = future.result()
    for item in pool.send_many([message, (b"raw", smtppool.Envelope("a@x.org", "b@x.org"))]):
        print(item)
    stats: dict[str, int] = pool.stats()
    print(result, stats, pool.is_idle(), pool.verify(), stats["connection_limit"])
    try:
        result = pool.send(message, timeout=5.0)
        result = pool.result(pool.submit(b"raw", {"from": "a@x.org", "to": "b@x.org"}), 5.0)
    except smtppool.PoolTimeoutError as withdrawn:  # never sent
        assert isinstance(withdrawn, smtppool.SMTPTimeoutError) and not withdrawn.delivery_unknown
    bounded = smtppool.SMTPPool(host="localhost", pool_timeout=10.0, retries=1)
    bounded.close(wait=True, timeout=5.0)
    smtppool.SMTPPool(host="localhost", pool_timeout=None).close(timeout=None)
    oauth = smtppool.OAuth2(user="a@example.com", access_token="token")
    smtppool.SMTPConnection(host="smtp.gmail.com", secure=True, auth=oauth, auth_method="XOAUTH2")
    try:
        conn.noop()
    except smtppool.SMTPError as exc:
        code: str = exc.code
        temporary: bool = exc.temporary
        reply_code: int | None = exc.response_code
        print(code, temporary, reply_code, exc.delivery_unknown)
    except smtplib.SMTPException:
        pass


def scaling_usage() -> None:
    from smtppool.contrib.celery import BatchResult, encode, send_batch, send_messages
    from smtppool.contrib.redis_limiter import RedisLimiter
    from smtppool.ratelimit import Limiter

    limiter: Limiter = RedisLimiter("redis://localhost:6379/0", key="acct", rate_limit=14)
    with smtppool.SMTPPool(host="smtp.example.com", rate_limiter=limiter) as pool:
        pool.send(b"From: a@x.org\r\nTo: b@x.org\r\n\r\nhi\r\n")
    item: dict[str, object] = encode(b"From: a@x.org\r\nTo: b@x.org\r\n\r\nhi\r\n", key="k")
    batch: BatchResult = send_batch(send_messages, [item], chunk_size=10)
    for outcome in batch.outcomes(timeout=60):
        status: str = outcome["status"]
        print(status, outcome["key"])
    try:
        pool.send(b"x")
    except smtppool.RateLimitError as exc:
        print(exc.temporary)
