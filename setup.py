"""Build smtppool: plain Python, or, with ``SMTPPOOL_COMPILE=1``, compiled with mypyc.

The compiled modules are the same typed Python source, turned into C by mypyc: about
a third less CPU per message.  Compiling is a build step for wheels
(``SMTPPOOL_COMPILE=1 python3 -m pip wheel --no-deps -w dist .``; the build backend in
``tools/`` then adds a pinned mypy to the build requirements); every other install,
editable ones included, is plain Python, so an edit to a ``.py`` file takes effect.
Metadata lives in setup.cfg.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from setuptools import setup

#: The modules every message passes through, in the order of the layers (see README, Design).
COMPILED = [
    "smtppool/replies.py",
    "smtppool/states.py",
    "smtppool/protocol.py",
    "smtppool/message.py",
    "smtppool/transport.py",
    "smtppool/channel.py",
    "smtppool/transaction.py",
    "smtppool/pipelining.py",
    "smtppool/stacking.py",
    "smtppool/connection.py",
]


def remove_compiled_modules(keep: list[str] | None = None) -> None:
    """Delete what an earlier in-place (editable) build left in the source tree, where it
    would shadow the source: every compiled module but those in ``keep``, which the
    coming build replaces, and mypyc's shared library, which it rebuilds."""
    root = Path(__file__).parent
    kept = {Path(path).stem for path in keep or []}
    for built in root.glob("smtppool/*.so"):
        if built.name.partition(".")[0] not in kept:
            built.unlink()
    for shared in root.glob("*__mypyc.*.so"):
        shared.unlink()


def extensions() -> list[Any]:
    """The compiled modules when ``SMTPPOOL_COMPILE=1`` asks for them, else none (and
    none left from an older build to shadow the source)."""
    if os.environ.get("SMTPPOOL_COMPILE") != "1":
        remove_compiled_modules()
        return []
    remove_compiled_modules(keep=COMPILED)
    from mypyc.build import mypycify  # a compiled build must compile: no quiet fallback

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=extensions())
