"""The command line, run in-process through main()."""

from __future__ import annotations

import pytest

from smtppool.cli import main


def test_demo_sends_a_batch_into_the_embedded_sink(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "50"]) == 0
    out = capsys.readouterr().out
    assert "sink listening on 127.0.0.1:" in out
    assert "sent 50, failed 0, received by sink 50" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["demo", "--count", "0"]) == 2
    assert main(["demo", "--count", "many"]) == 2
    assert "usage:" in capsys.readouterr().err
