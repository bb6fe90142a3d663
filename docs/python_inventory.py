"""The Python objects the smtppool docs name, as an intersphinx inventory, so that links
to the standard library resolve without fetching docs.python.org's inventory."""

from __future__ import annotations

import zlib
from pathlib import Path

#: (name, role, page under https://docs.python.org/3/library/) of each standard library
#: object the docs link, as docs.python.org files them.
OBJECTS: list[tuple[str, str, str]] = [
    ("email.message.EmailMessage", "py:class", "email.message"),
    ("email.message.Message", "py:class", "email.compat32-message"),
    ("ssl.SSLContext", "py:class", "ssl"),
    ("ssl.SSLError", "py:exception", "ssl"),
    ("smtplib.SMTPException", "py:exception", "smtplib"),
    ("smtplib.SMTP.send_message", "py:method", "smtplib"),
    ("logging.Logger", "py:class", "logging"),
    ("socket.socket", "py:class", "socket"),
    ("concurrent.futures.Future", "py:class", "concurrent.futures"),
    ("concurrent.futures.ThreadPoolExecutor", "py:class", "concurrent.futures"),
    ("threading.Condition", "py:class", "threading"),
    ("collections.abc.Iterable", "py:class", "collections.abc"),
    ("collections.abc.Iterator", "py:class", "collections.abc"),
    ("collections.abc.Mapping", "py:class", "collections.abc"),
    ("collections.abc.Sequence", "py:class", "collections.abc"),
    ("collections.abc.Callable", "py:class", "collections.abc"),
    ("typing.Any", "py:data", "typing"),
    ("typing.BinaryIO", "py:class", "typing"),
    ("TimeoutError", "py:exception", "exceptions"),
    ("ConnectionError", "py:exception", "exceptions"),
    ("ValueError", "py:exception", "exceptions"),
    ("TypeError", "py:exception", "exceptions"),
    ("ImportError", "py:exception", "exceptions"),
    ("bytes", "py:class", "stdtypes"),
    ("str", "py:class", "stdtypes"),
    ("dict", "py:class", "stdtypes"),
    ("list", "py:class", "stdtypes"),
    ("tuple", "py:class", "stdtypes"),
    ("int", "py:class", "functions"),
    ("float", "py:class", "functions"),
    ("bool", "py:class", "functions"),
    ("object", "py:class", "functions"),
]


def write_inventory(path: Path) -> Path:
    """Write the inventory (Sphinx's format, version 2) to ``path`` and return it."""
    lines = [f"{name} {role} 1 library/{page}.html#$ -" for name, role, page in OBJECTS]
    header = (
        "# Sphinx inventory version 2\n# Project: Python\n# Version: 3\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress("\n".join(lines).encode() + b"\n"))
    return path
