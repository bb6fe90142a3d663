"""Envelope values: who a message is from and to, DSN requests, and what came of a send.

Also the one place that checks envelope addresses (no CR/LF/NUL or other control
characters can reach a command line) and derives an envelope from message headers the
way :meth:`smtplib.SMTP.send_message` does.  Plain data and pure functions only.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Any

from .domains import ascii_address
from .message import MessageInput, strip_bcc

if TYPE_CHECKING:
    from .errors import SMTPError

__all__ = [
    "DSN",
    "Envelope",
    "SendResult",
    "ascii_address",
    "Address",
    "check_address",
    "envelope_from_message",
    "pair_with_envelope",
    "utf8_address_xtext",
    "xtext",
]

#: Never in an address: C0 and C1 controls, DEL, angle brackets, and white space other
#: than the plain space (U+2028, U+00A0, U+3000 ... which a server may split or drop).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f<>]|[^\S ]")
#: RFC 5321's Quoted-string local part (qtextSMTP and quoted-pairSMTP; any non-ASCII
#: character for SMTPUTF8), then a non-empty domain without spaces: the one place a
#: space may be.
_QUOTED_LOCAL_PART = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])*"@[^ "]+'
)
_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
#: An ORCPT address type (RFC 3461 "addr-type"): rfc822, utf-8, x400, ...
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
#: RFC 3461's bounds on the encoded values.
ENVID_MAX = 100
ORCPT_MAX = 500


class Address(str):
    """An address that can go between ``<`` and ``>`` in a command: checked when made
    (``ValueError``/``TypeError`` otherwise), so the envelope checks once and the
    protocol's commands take it as it is.

    A space is allowed only inside a quoted local part (``"john smith"@example.com``),
    so an address can never add a parameter to the command it is in; CR, LF, NUL,
    other control characters, ``<`` and ``>`` are refused.
    """

    __slots__ = ()

    def __new__(cls, address: object, what: str = "address") -> Address:
        text = _check_characters(address, what)
        if " " in text and not _QUOTED_LOCAL_PART.fullmatch(text):
            raise ValueError(
                f"{what} {text!r} contains a space outside a quoted local part "
                '(RFC 5321: write "john smith"@example.com)'
            )
        return super().__new__(cls, text)


def check_address(address: object, what: str = "address") -> Address:
    """``address`` as an :class:`Address` (one already is: it was checked when made).

    :raises TypeError: not a string.
    :raises ValueError: contains CR, LF, NUL, another control character, ``<``, ``>``,
        or a space outside a quoted local part.
    """
    return address if type(address) is Address else Address(address, what)


def _check_characters(address: object, what: str) -> str:
    if not isinstance(address, str):
        raise TypeError(f"{what} must be a str, not {type(address).__name__}")
    bad = _FORBIDDEN.search(address)
    if bad:
        raise ValueError(f"{what} {address!r} contains the forbidden character {bad.group()!r}")
    if address != address.strip():
        raise ValueError(f"{what} {address!r} has leading or trailing white space")
    return address


def xtext(value: str) -> str:
    """Encode an ESMTP parameter value as RFC 3461 xtext (``+XX`` for unsafe bytes)."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in value.encode("utf-8")
    )


def utf8_address_xtext(address: str) -> str:
    """Encode an address as RFC 6533 utf-8-addr-xtext: ``\\x{HEX}`` for every character
    that is not printable ASCII or is ``+``, ``=`` or a backslash."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def _encoded_field(
    name: str, value: object, encode: Callable[[str], str], limit: int
) -> str | None:
    """A DSN value in its wire form, or None when not requested (None or empty).

    :raises TypeError: not a string.
    :raises ValueError: it cannot be encoded, or is longer than ``limit`` once encoded.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"DSN {name} must be a str, not {type(value).__name__}")
    encoded = encode(value)
    if len(encoded) > limit:
        raise ValueError(f"DSN {name} is {len(encoded)} characters encoded; at most {limit}")
    return encoded


def _encoded_envid(envid: str) -> str:
    if not re.fullmatch(r"[\x20-\x7e]+", envid):
        raise ValueError(f"DSN envid must be printable ASCII, not {envid!r}")
    return xtext(envid)


def _encoded_orcpt(orcpt: str) -> str:
    """``addr-type;encoded-address`` for ORCPT; rfc822 unless given, or utf-8 when the
    address is not ASCII."""
    if ";" in orcpt:
        kind, _, address = orcpt.partition(";")
    else:
        kind, address = ("rfc822" if orcpt.isascii() else "utf-8"), orcpt
    if not _ADDRESS_TYPE.fullmatch(kind):
        raise ValueError(f"DSN orcpt address type must be a word such as rfc822, not {kind!r}")
    _check_characters(address, "DSN orcpt")  # a space is fine: it is encoded
    if not address:
        raise ValueError(f"DSN orcpt {orcpt!r} has no address")
    if kind.lower() == "utf-8":
        return f"{kind};{utf8_address_xtext(address)}"
    if not address.isascii():
        raise ValueError(f"DSN orcpt {address!r} is not ASCII: give it as 'utf-8;{address}'")
    return f"{kind};{xtext(address)}"


@dataclass(frozen=True, slots=True)
class DSN:
    """Delivery status notification request (RFC 3461), used when the server offers DSN."""

    ret: str | None = None  #: "FULL" or "HDRS"
    envid: str | None = None
    notify: Sequence[str] | None = None  #: any of NEVER, SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  #: original recipient, e.g. "rfc822;user@example.com"
    #: The ENVID and ORCPT values as they go on the wire (xtext), computed.
    encoded_envid: str | None = field(init=False, repr=False, compare=False)
    encoded_orcpt: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ret is not None:
            ret = self.ret.upper()
            if ret not in ("FULL", "HDRS"):
                raise ValueError(f"DSN ret must be 'FULL' or 'HDRS', not {self.ret!r}")
            object.__setattr__(self, "ret", ret)
        if self.notify is not None:
            if isinstance(self.notify, str):
                notify = tuple(v.strip().upper() for v in self.notify.split(","))
            else:
                notify = tuple(str(v).upper() for v in self.notify)
            unknown = set(notify) - _NOTIFY_VALUES
            if unknown or not notify:
                raise ValueError(
                    f"DSN notify values must be among {sorted(_NOTIFY_VALUES)}, got {self.notify!r}"
                )
            if "NEVER" in notify and len(notify) > 1:
                raise ValueError("DSN notify 'NEVER' cannot be combined with other values")
            object.__setattr__(self, "notify", notify)
        envid = _encoded_field("envid", self.envid, _encoded_envid, ENVID_MAX)
        object.__setattr__(self, "encoded_envid", envid)
        orcpt = _encoded_field("orcpt", self.orcpt, _encoded_orcpt, ORCPT_MAX)
        object.__setattr__(self, "encoded_orcpt", orcpt)


def _recipients(value: object) -> tuple[Address, ...]:
    if isinstance(value, str):
        items: Iterable[object] = [value]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise TypeError(f"recipients must be str or a sequence of str, not {type(value).__name__}")
    return tuple(check_address(item, "recipient") for item in items)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: ``MAIL FROM`` and ``RCPT TO``, independent of the headers.

    ``mail_from`` may be ``""`` (the null reverse-path of bounces); ``rcpt_to`` takes a
    single address or a sequence.  ``size`` overrides the size announced with SIZE;
    ``use_8bit_mime`` declares 8-bit content that cannot be detected (files, iterables).
    """

    mail_from: str
    rcpt_to: Sequence[str]
    size: int | None = None
    use_8bit_mime: bool = False
    dsn: DSN | None = None
    #: True when an address is not ASCII; computed.  Sent with SMTPUTF8 when the server
    #: offers it (addresses and headers as written), else in ASCII if they can be.
    is_international: bool = field(init=False, repr=False, compare=False)
    #: True when an address cannot be ASCII at all (a local part that is not ASCII, or
    #: a domain IDNA cannot encode unchanged): only SMTPUTF8 can carry it; computed.
    needs_smtputf8: bool = field(init=False, repr=False, compare=False)
    #: The sender and recipients with internationalised domains in IDNA A-label form
    #: (``bücher.example`` -> ``xn--bcher-kva.example``), for a server without SMTPUTF8;
    #: as written where that cannot be done (then ``needs_smtputf8``); computed.
    ascii_mail_from: str = field(init=False, repr=False, compare=False)
    ascii_rcpt_to: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mail_from = check_address(self.mail_from, "sender")
        recipients = _recipients(self.rcpt_to)
        if not recipients:
            raise ValueError("an envelope needs at least one recipient")
        object.__setattr__(self, "mail_from", mail_from)
        object.__setattr__(self, "rcpt_to", recipients)
        given = [mail_from, *recipients]
        ascii_forms = [a if a.isascii() else Address(ascii_address(a) or a) for a in given]
        object.__setattr__(self, "is_international", not all(a.isascii() for a in given))
        object.__setattr__(self, "needs_smtputf8", not all(a.isascii() for a in ascii_forms))
        object.__setattr__(self, "ascii_mail_from", ascii_forms[0])
        object.__setattr__(self, "ascii_rcpt_to", tuple(ascii_forms[1:]))
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"envelope size must be a non-negative int, not {self.size!r}")
        if self.dsn is not None and not isinstance(self.dsn, DSN):
            raise TypeError(f"dsn must be a smtppool.DSN, not {type(self.dsn).__name__}")

    @classmethod
    def coerce(cls, value: Envelope | Mapping[str, Any]) -> Envelope:
        """Accept an :class:`Envelope` or a mapping with ``"from"`` and ``"to"`` keys."""
        if isinstance(value, Envelope):
            return value
        if isinstance(value, Mapping):
            extra = set(value) - {"from", "to", "size", "use_8bit_mime", "dsn"}
            if extra or "from" not in value or "to" not in value:
                raise ValueError(
                    "an envelope mapping needs 'from' and 'to' keys"
                    + (f"; unknown keys: {sorted(extra)}" if extra else "")
                )
            dsn = value.get("dsn")
            return cls(
                value["from"],
                value["to"],
                size=value.get("size"),
                use_8bit_mime=bool(value.get("use_8bit_mime", False)),
                dsn=DSN(**dsn) if isinstance(dsn, Mapping) else dsn,
            )
        raise TypeError(f"envelope must be an Envelope or a mapping, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the server did with one message."""

    accepted: list[str]
    rejected: list[str]
    rejected_errors: list[SMTPError]
    #: The final reply, code included, e.g. ``"250 2.0.0 Ok: queued as 4F2A"``.
    response: str
    envelope: Envelope
    #: The reply that decided each recipient's fate (RCPT, or LMTP's per-recipient reply).
    recipient_responses: dict[str, str] = field(default_factory=dict)


def envelope_from_message(message: Message) -> Envelope:
    """Derive the envelope from headers exactly as :meth:`smtplib.SMTP.send_message` does.

    With one ``Resent-*`` block, ``Resent-Sender``/``Resent-From`` and
    ``Resent-To``/``Resent-Cc``/``Resent-Bcc`` are used; otherwise ``Sender``/``From`` and
    ``To``/``Cc``/``Bcc``.

    :raises ValueError: several ``Resent-`` blocks, or no sender or recipient found.
    """
    resent = message.get_all("Resent-Date")
    if resent is None:
        prefix = ""
    elif len(resent) == 1:
        prefix = "Resent-"
    else:
        raise ValueError("message has more than one 'Resent-' header block")
    sender_header = message[prefix + "Sender"] or message[prefix + "From"]
    if sender_header is None:
        raise ValueError(f"message has no {prefix}From or {prefix}Sender header")
    senders = email.utils.getaddresses([str(sender_header)])
    recipient_headers = [
        str(value)
        for name in ("To", "Bcc", "Cc")
        for value in (message.get_all(prefix + name) or [])
    ]
    recipients = [addr for _, addr in email.utils.getaddresses(recipient_headers) if addr]
    if not recipients:
        raise ValueError(f"message has no {prefix}To, {prefix}Cc or {prefix}Bcc recipient")
    return Envelope(senders[0][1], recipients)


def pair_with_envelope(
    message: MessageInput, envelope: Envelope | Mapping[str, Any] | None
) -> tuple[MessageInput, Envelope]:
    """Pair a message with its envelope, deriving it from the headers when not given.

    Raw messages lose their ``Bcc`` fields here (``Message`` objects lose them when
    flattened).

    :raises ValueError: a file or iterable message came without an envelope.
    """
    if envelope is not None:
        return message, Envelope.coerce(envelope)
    if isinstance(message, Message):
        return message, envelope_from_message(message)
    if isinstance(message, (bytes, bytearray, memoryview, str)):
        raw = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        derived = envelope_from_message(BytesHeaderParser().parsebytes(raw))
        return strip_bcc(raw), derived
    raise ValueError("file and iterable messages need an explicit envelope")
