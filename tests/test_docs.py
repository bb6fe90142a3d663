"""The Sphinx documentation builds with warnings as errors: the guide (the README,
whose snippets test_readme.py runs) and the API reference from the docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "html" / "api.html").read_text("utf-8")
    assert "pool_timeout" in api and "SMTPConnection" in api  # the options, from docstrings
    assert "https://docs.python.org/3/library/ssl.html#ssl.SSLContext" in api  # intersphinx
