"""The command line, run in-process through main()."""

from __future__ import annotations

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
