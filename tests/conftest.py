"""Shared fixtures: trustme certificates, aiosmtpd sinks, scripted servers, leak guard."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

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
