"""Architecture check: the value and protocol layers never import I/O, threads or clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import smtppool

PACKAGE = Path(smtppool.__file__).parent
FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "time", "concurrent", "asyncio"}
PURE = ["protocol.py", "message.py", "auth.py", "envelope.py", "errors.py", "pushback.py"]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    found = imported_modules(PACKAGE / module) & FORBIDDEN
    # errors.py subclasses ssl.SSLError for TLSError, so that "except ssl.SSLError" catches it.
    allowed = {"ssl"} if module == "errors.py" else set()
    assert found <= allowed, f"{module} imports {sorted(found - allowed)}"


def test_only_connection_and_sink_open_sockets() -> None:
    users = {p.name for p in PACKAGE.glob("*.py") if "socket" in imported_modules(p)}
    assert users <= {"connection.py", "sink.py"}
