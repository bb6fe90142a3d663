"""Shared fixtures: trustme certificates, aiosmtpd sinks, scripted servers, leak guard."""

from __future__ import annotations

import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import smtppool
from smtppool.sink import Sink

from .servers import ScriptedServer, Step

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, so that "pytest tests --interop-matrix PATH" (a whole run) accepts it too.
    parser.addoption(
        "--interop-matrix",
        metavar="PATH",
        help="write the interop feature matrix (reStructuredText) to PATH",
    )


#: Seconds a source file may be newer than its compiled module (both written by one
#: install) before the compiled one counts as stale.
INSTALL_SKEW = 2.0


def pytest_report_header() -> str:
    compiled = smtppool.compiled_modules()
    return "smtppool: " + ("compiled: " + ", ".join(compiled) if compiled else "pure Python")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test compiled modules older than their source (an edit since the wheel
    was built would go untested), or pure Python where CI expects compiled."""
    compiled = smtppool.compiled_modules()
    if os.environ.get("SMTPPOOL_EXPECT_COMPILED") and not compiled:
        pytest.exit("SMTPPOOL_EXPECT_COMPILED is set but smtppool was installed as pure Python")
    for name in compiled:
        binary = Path(sys.modules[name].__file__ or "")
        source = binary.with_name(name.rpartition(".")[2] + ".py")
        if source.exists() and source.stat().st_mtime > binary.stat().st_mtime + INSTALL_SKEW:
            pytest.exit(
                f"{binary.name} is older than {source.name}: rebuild the compiled wheel "
                "(SMTPPOOL_COMPILE=1 python3 -m pip wheel --no-deps -w dist .) or install "
                "the checkout (python3 -m pip install -e '.[dev]')"
            )


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> dict[str, Any]:
    """``tls=`` option that trusts only the test CA (still verifying hostnames)."""
    return {"cadata": ca.cert_pem.bytes().decode()}


@pytest.fixture
def smtpd(server_tls_context: ssl.SSLContext) -> Iterator[Callable[..., Sink]]:
    """Factory: ``smtpd(tls=None|"starttls"|"implicit", **sink_options)`` -> started Sink."""
    sinks: list[Sink] = []

    def start(tls: str | None = None, **options: Any) -> Sink:
        if tls == "starttls":
            options.setdefault("tls_context", server_tls_context)
        elif tls == "implicit":
            options.setdefault("ssl_context", server_tls_context)
        sink = Sink(**options).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    """Factory: ``scripted(script, [script2, ...])`` -> started ScriptedServer."""
    servers: list[ScriptedServer] = []

    def start(*scripts: list[Step], host: str = "127.0.0.1") -> ScriptedServer:
        server = ScriptedServer(*scripts, host=host).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a smtppool thread running (a leaked executor or sink)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.name.startswith("smtppool") and t.is_alive()
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
