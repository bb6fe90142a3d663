"""Build smtppool; its per-message modules are compiled with mypyc when that can be done.

The compiled modules are the same typed Python source, turned into C by mypyc: about
a third less CPU per message.  Without a C compiler, or with ``SMTPPOOL_PURE_PYTHON=1``
in the environment, the package installs as plain Python and behaves the same.
Metadata lives in setup.cfg.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The modules every message passes through, in the order of the layers (see README, Design).
COMPILED = [
    "smtppool/replies.py",
    "smtppool/protocol.py",
    "smtppool/message.py",
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


def fall_back(reason: object) -> None:
    remove_compiled_modules()
    print(f"smtppool: not compiled ({reason}); installing pure Python", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compile the extensions, or leave none behind and install plain Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: the source still works
            # The compiled modules share one library: a partial set would fail on import.
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            fall_back(exc)


def extensions() -> list[Any]:
    if os.environ.get("SMTPPOOL_PURE_PYTHON"):
        fall_back("SMTPPOOL_PURE_PYTHON is set")
        return []
    remove_compiled_modules(keep=COMPILED)
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3"))
    except (Exception, SystemExit) as exc:  # mypy missing, or it refused the source
        fall_back(repr(exc))
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
