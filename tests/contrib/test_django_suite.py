"""Django's own SMTP backend test suite, run against smtppool's backend.

The installed Django's source distribution (which carries its tests) is fetched from
PyPI; its SMTP backend tests run in a subprocess with our backend swapped in.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from .django_suite import SKIPPED  # noqa: E402

LABELS = (
    ["mail.test_backends.SMTPBackendTests", "mail.test_backends.SMTPBackendStoppedServerTests"]
    if django.VERSION >= (6, 1)
    else ["mail.tests.SMTPBackendTests"]
)


@pytest.fixture(scope="session")
def django_tests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("django-sdist")
    version = django.__version__
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"django=={version}",
            "-d",
            str(target),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    [archive] = target.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    [tests] = target.glob("*/tests")
    return tests


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_djangos_smtp_backend_tests_pass(django_tests_dir: Path) -> None:
    runner = Path(__file__).with_name("django_suite.py")
    run = subprocess.run(
        [sys.executable, str(runner), str(django_tests_dir), *LABELS],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    output = run.stdout + run.stderr
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    # unittest -v2 prints "name (id)", maybe the docstring's first line, "... skipped"
    skipped = set(
        re.findall(r"^test_\w+ \(([\w.]+)\)\n?[^\n]*?\.\.\. skipped", output, re.MULTILINE)
    )
    print(f"\nDjango {django.__version__}: {ran and ran.group(0)}; skipped: {sorted(skipped)}")
    assert run.returncode == 0, output[-5000:]
    assert ran is not None and int(ran.group(1)) >= 40
    prefix = LABELS[0] + "."
    assert skipped == {test for test in SKIPPED if test.startswith(prefix)}
