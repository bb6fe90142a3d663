"""Server replies as values: :class:`Reply` and the :class:`Extensions` of an EHLO.

At the bottom of the package (it imports nothing from it), so that every layer, the
errors included, can speak of replies without reaching up into the protocol.  Pure
values; no sockets, threads or clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

__all__ = ["Extensions", "Reply"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)", re.ASCII)
#: A SIZE value: ASCII digits only (``str.isdigit`` takes "²"), and few enough of them
#: that ``int`` cannot refuse it; more than 18 is no limit worth keeping to.
_SIZE = re.compile(r"[0-9]{1,18}")


class Reply(NamedTuple):
    """One complete server reply: an immutable value.

    A named tuple rather than a frozen dataclass: four are built per message, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs twice
    as much.
    """

    code: int
    lines: tuple[str, ...]
    #: The command it answers, credentials redacted; None for an unsolicited reply.
    command: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> tuple[int, int, int] | None:
        """The RFC 3463 enhanced status code of the first line, e.g. ``(2, 1, 0)``."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        return (int(match[1]), int(match[2]), int(match[3])) if match else None

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {' '.join(self.lines)}".rstrip()


class Extensions(Mapping[str, str]):
    """ESMTP keywords from a successful EHLO/LHLO reply, looked up case-insensitively."""

    __slots__ = ("_items", "auth_mechanisms", "keywords", "size")

    def __init__(
        self, items: Mapping[str, str] | None = None, auth_mechanisms: Iterable[str] = ()
    ) -> None:
        self._items = {k.upper(): v for k, v in (items or {}).items()}
        #: The keywords, upper-case: a C-level membership test where one is hot.
        self.keywords = frozenset(self._items)
        self.auth_mechanisms = frozenset(m.upper() for m in auth_mechanisms)
        size = self._items.get("SIZE", "")
        #: Largest message the server accepts, or None when it sets no limit (or no
        #: number a client could check against).
        self.size = int(size) if _SIZE.fullmatch(size) and int(size) > 0 else None

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Extensions:
        """Parse the lines after the first of an EHLO reply; accepts legacy ``AUTH=``."""
        items: dict[str, str] = {}
        mechanisms: list[str] = []
        for line in lines:
            keyword, _, params = line.strip().partition(" ")
            keyword = keyword.upper()
            if not keyword:
                continue
            if keyword.startswith("AUTH="):
                mechanisms += [keyword[5:], *params.split()]
                items.setdefault("AUTH", "")
                continue
            if keyword == "AUTH":
                mechanisms += params.split()
            items[keyword] = params.strip()
        return cls(items, mechanisms)

    def __getitem__(self, key: str) -> str:
        return self._items[key.upper()]

    def __contains__(self, key: object) -> bool:
        return key in self._items or (isinstance(key, str) and key.upper() in self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Extensions({self._items!r})"
