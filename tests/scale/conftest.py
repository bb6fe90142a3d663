"""Real redis-server and Celery worker processes for the ``scale`` tests.

Each test that needs Redis gets its own ``redis-server`` on a free loopback port (so
one test can stop it); workers are ``celery -A smtppool.contrib.celery worker``
subprocesses configured through the environment, as a user would run them.  Missing
``redis-server`` fails the tests in CI and skips them elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ..interop.servers import free_port
from ..servers import wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.scale)


class RedisServer:
    """A throw-away ``redis-server`` with no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtppool-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.dir)]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        assert wait_until(answers, 10), "timed out waiting for redis-server to answer PING"
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        reason = "redis-server not installed (apt-get install redis-server; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = RedisServer().start()
    yield server
    server.remove()


class Workers:
    """Celery worker processes (prefork, one child each) started with an environment."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.dir = Path(tempfile.mkdtemp(prefix="smtppool-celery-"))

    def start(self, count: int) -> Workers:
        for index in range(len(self.processes), len(self.processes) + count):
            log = self.dir / f"worker{index}.log"
            command = [
                sys.executable, "-m", "celery", "-A", "smtppool.contrib.celery", "worker",
                "--pool", "prefork", "--concurrency", "1", "-n", f"w{index}@localhost",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "INFO",
            ]  # fmt: skip
            with log.open("wb") as out:
                self.processes.append(subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **self.environ},
                ))  # fmt: skip
            self.logs.append(log)
        for log in self.logs:
            assert wait_until(lambda log=log: b" ready." in log.read_bytes(), 60), (
                f"timed out waiting for {log.name} ready"
            )
        return self

    def children(self, index: int) -> list[int]:
        """The prefork child processes of worker ``index``."""
        parent = self.processes[index].pid
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
        return found

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def celery_workers() -> Iterator[Callable[..., Workers]]:
    """Factory: ``celery_workers(count, **environment)`` -> started Workers."""
    started: list[Workers] = []

    def start(count: int, **environ: str) -> Workers:
        workers = Workers(environ)
        started.append(workers)
        return workers.start(count)

    yield start
    for workers in started:
        workers.stop()


#: Seconds a message may spend between the limiter's grant and the sink's timestamp.
#: The shared window is kept on the timestamps workers take when they ask; on a loaded
#: 2-core machine (CI runs three workers, their pool processes, Redis, the sink and the
#: test) a process can be descheduled for 100 ms or more in between, so rate checks at
#: the sink count windows of 1 s minus this.
TRANSIT_ALLOWANCE = 0.15


def max_in_window(times: list[float], width: float) -> int:
    """The most timestamps that fall in any half-open window of ``width`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best
