"""Internationalised domain names: the one place a domain gets its ASCII form.

An address whose local part is ASCII needs no SMTPUTF8 when its domain has an IDNA
A-label form (``bücher.example`` -> ``xn--bcher-kva.example``).  Python's ``idna`` codec
implements IDNA 2003, which maps some characters to others (``ß`` to ``ss``, ``ς`` to
``σ``, ``ﬀ`` to ``ff``) and so would send mail to a different domain: a conversion is
used only when it decodes back to the same name, letter for letter but for case.
Pure functions; no sockets, threads or clocks.
"""

from __future__ import annotations

__all__ = ["ascii_domain"]


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
