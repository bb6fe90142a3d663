"""Fixtures that start the real servers once per session, and the feature matrix.

A server that is not installed (or does not come up) fails its tests in CI (``CI``
set, as ``.ci/run`` does) and skips them elsewhere, saying how to install it.
``--interop-matrix PATH`` writes the server x feature outcomes as reStructuredText.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from .servers import Dovecot, Exim, MailServer, OpenSMTPD, Postfix, ServerUnavailable, SmtpSink

#: Column order of the matrix: every server the suite starts.
SERVER_NAMES = ("postfix", "smtp-sink", "exim", "opensmtpd", "dovecot")
#: Skip reasons starting with this mark a test that does not apply to a server ("—").
NOT_APPLICABLE = "n/a:"
_OUTCOMES: dict[tuple[str, str], dict[str, str]] = {}  # (feature, server) -> {test id: outcome}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "feature(name): the interop feature a test exercises")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.interop)


def _start(server: MailServer) -> Iterator[MailServer]:
    if os.geteuid() != 0:
        reason = "the interop servers need root (system users, ports, Maildir owners)"
    else:
        try:
            server.start()
        except ServerUnavailable as exc:
            reason = str(exc)
        else:
            try:
                yield server
            finally:
                server.stop()
                server.remove()
            return
    if os.environ.get("CI"):
        pytest.fail(f"{server.name} unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"{server.name} unavailable: {reason}")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[MailServer]:
    yield from _start(Dovecot())


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot) -> Iterator[MailServer]:
    yield from _start(Postfix(dovecot))


@pytest.fixture(scope="session")
def smtp_sink_server() -> Iterator[MailServer]:
    yield from _start(SmtpSink())


@pytest.fixture(scope="session")
def exim() -> Iterator[MailServer]:
    yield from _start(Exim())


@pytest.fixture(scope="session")
def opensmtpd() -> Iterator[MailServer]:
    yield from _start(OpenSMTPD())


_FIXTURES = {
    "postfix": "postfix",
    "smtp-sink": "smtp_sink_server",
    "exim": "exim",
    "opensmtpd": "opensmtpd",
    "dovecot": "dovecot",
}


@pytest.fixture(params=SERVER_NAMES)
def server(request: pytest.FixtureRequest) -> MailServer:
    started: MailServer = request.getfixturevalue(_FIXTURES[request.param])
    return started


@pytest.fixture
def offered(server: MailServer) -> Callable[[str], None]:
    """``offered("CHUNKING")`` skips the test when the server does not advertise it."""

    def check(keyword: str) -> None:
        if keyword not in server.advertised:
            pytest.skip(f"{server.name} does not offer {keyword}")

    return check


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    marker = item.get_closest_marker("feature")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None or "server" not in callspec.params:
        return report
    if report.when == "call" or not report.passed:
        outcome: str = report.outcome
        if report.skipped:
            reason = str(report.longrepr)
            outcome = "not offered" if "does not offer" in reason else "skipped"
            if NOT_APPLICABLE in reason:
                outcome = "n/a"
        cell = _OUTCOMES.setdefault((marker.args[0], callspec.params["server"]), {})
        if cell.get(item.nodeid) in (None, "passed"):
            cell[item.nodeid] = outcome
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--interop-matrix")
    if path and _OUTCOMES:
        Path(path).write_text(_matrix())


def _cell(outcomes: dict[str, str]) -> str:
    values = set(outcomes.values())
    if values <= {"n/a"}:
        return "—"
    if values == {"passed"}:
        return f"pass ({len(outcomes)})"
    for word in ("failed", "skipped"):
        if word in values:
            return word.upper()
    return "not offered" if values == {"not offered"} else "pass (partly offered)"


def _matrix() -> str:
    features = list(dict.fromkeys(feature for feature, _ in _OUTCOMES))
    header = ["feature", *SERVER_NAMES]
    rows = [header] + [
        [feature] + [_cell(_OUTCOMES.get((feature, name), {})) for name in SERVER_NAMES]
        for feature in features
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = line(["=" * width for width in widths])
    lines = [rule, line(rows[0]), rule, *(line(row) for row in rows[1:]), rule]
    return MATRIX_TEMPLATE.format(table="\n".join(text.rstrip() for text in lines))


MATRIX_TEMPLATE = Path(__file__).with_name("matrix.rst.in").read_text()
