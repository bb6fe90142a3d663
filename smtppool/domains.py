"""Internationalised domain names: the one place a domain gets its ASCII form.

An address whose local part is ASCII needs no SMTPUTF8 when its domain has an IDNA
A-label form (``bücher.example`` -> ``xn--bcher-kva.example``).  Python's ``idna`` codec
implements IDNA 2003, which maps some characters to others (``ß`` to ``ss``, ``ς`` to
``σ``, ``ﬀ`` to ``ff``) and so would send mail to a different domain: a conversion is
used only when it decodes back to the same name, letter for letter but for case.
Pure functions; no sockets, threads or clocks.
"""

from __future__ import annotations

__all__ = ["ascii_address", "ascii_domain", "with_ascii_domain"]


def ascii_domain(domain: str) -> str | None:
    """``domain`` in ASCII (A-labels for its non-ASCII labels), or None when IDNA cannot
    encode it without changing it."""
    if domain.isascii():
        return domain
    try:
        a_label = domain.encode("idna").decode("ascii")
        back = a_label.encode("ascii").decode("idna")
    except UnicodeError:
        return None
    return a_label if back == domain.lower() else None


def with_ascii_domain(address: str) -> str:
    """``address`` with its domain as :func:`ascii_domain` gives it, where it can; the
    local part as it is."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{ascii_domain(domain) or domain}" if at else address


def ascii_address(address: str) -> str | None:
    """``address`` with its domain in IDNA A-label form, or None when it cannot be ASCII
    (a local part that is not ASCII, or a domain IDNA cannot encode unchanged)."""
    converted = with_ascii_domain(address)
    return converted if converted.isascii() else None
