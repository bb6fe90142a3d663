"""The command line, run in-process through main()."""

from __future__ import annotations

import subprocess
import sys

import pytest

from smtppool.cli import main


def test_demo_sends_a_batch_into_the_embedded_sink(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "60", "--max-connections", "3"]) == 0
    out = capsys.readouterr().out
    assert "sink listening on 127.0.0.1:" in out
    assert "sent 60, failed 0, received by sink 60" in out
    assert "connections used 3 (max_connections=3)" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["demo", "--count", "0"]) == 2
    assert main(["demo", "--count", "many"]) == 2
    assert main(["demo", "--max-connections", "0"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_demo_runs_as_a_newcomer_would() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "smtppool", "demo", "--count", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "sent 200, failed 0, received by sink 200" in run.stdout
    assert run.stderr == ""  # no progress bar when stderr is not a terminal
