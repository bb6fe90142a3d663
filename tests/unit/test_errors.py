"""The error hierarchy: smtplib compatibility, builtins, pickling, temporary, str."""

from __future__ import annotations

import copy
import pickle
import smtplib
import ssl

import pytest

import smtppool
from smtppool.errors import SMTPError
from smtppool.protocol import Reply

TABLE = [
    (smtppool.ConnectError, "ECONNECTION", ConnectionError),
    (smtppool.SMTPTimeoutError, "ETIMEDOUT", TimeoutError),
    (smtppool.TLSError, "ETLS", ssl.SSLError),
    (smtppool.AuthenticationError, "EAUTH", None),
    (smtppool.EnvelopeError, "EENVELOPE", None),
    (smtppool.MessageError, "EMESSAGE", None),
    (smtppool.ProtocolError, "EPROTOCOL", None),
    (smtppool.PoolClosedError, "ECLOSED", None),
]


@pytest.mark.parametrize("cls, code, builtin", TABLE)
def test_hierarchy_and_codes(cls: type[SMTPError], code: str, builtin: type | None) -> None:
    error = cls("it broke")
    assert error.code == code
    assert isinstance(error, smtplib.SMTPException) and isinstance(error, SMTPError)
    if builtin is not None:
        assert isinstance(error, builtin)
    assert str(error) == f"{code}: it broke"
    with pytest.raises(smtplib.SMTPException):
        raise error


@pytest.mark.parametrize("cls, code, builtin", TABLE)
def test_pickle_and_copy_round_trip(cls: type[SMTPError], code: str, builtin: type | None) -> None:
    error = cls(
        "failed",
        response="451 4.3.0 later",
        response_code=451,
        command="MAIL FROM:<a@b>",
        delivery_unknown=True,
    )
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is cls
        assert (clone.code, clone.response, clone.response_code, clone.command) == (
            code,
            "451 4.3.0 later",
            451,
            "MAIL FROM:<a@b>",
        )
        assert clone.delivery_unknown and clone.temporary


def test_temporary() -> None:
    assert smtppool.EnvelopeError("x", response_code=450).temporary
    assert not smtppool.EnvelopeError("x", response_code=550).temporary
    assert smtppool.ConnectError("reset").temporary
    assert smtppool.SMTPTimeoutError("slow").temporary
    assert not smtppool.TLSError("bad cert").temporary
    assert not smtppool.ProtocolError("garbage").temporary


def test_from_reply_and_code_override() -> None:
    reply = Reply(535, ("5.7.8 Authentication credentials invalid",), "AUTH PLAIN ****")
    error = smtppool.AuthenticationError.from_reply(reply, "AUTH PLAIN failed")
    assert error.response == "535 5.7.8 Authentication credentials invalid"
    assert error.response_code == 535 and error.command == "AUTH PLAIN ****"
    assert str(error) == (
        "EAUTH: AUTH PLAIN failed (server said: 535 5.7.8 Authentication credentials invalid)"
    )
    assert smtppool.ConnectError("no such host", code="EDNS").code == "EDNS"
    assert smtppool.ConnectError("x").code == "ECONNECTION"  # the override is per instance
