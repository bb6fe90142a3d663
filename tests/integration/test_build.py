"""Building the package: compiled with mypyc where it can be, plain Python where not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import smtppool

ROOT = Path(__file__).resolve().parents[2]


def test_compiled_modules_name_the_extension_modules_all_or_none() -> None:
    compiled = smtppool.compiled_modules()
    loaded = {name: module for name, module in sys.modules.items() if name.startswith("smtppool.")}
    for name, module in loaded.items():
        file = getattr(module, "__file__", None) or ""
        assert (name in compiled) == file.endswith(tuple(EXTENSION_SUFFIXES)), name
    assert compiled in (
        [],
        ["smtppool.connection", "smtppool.message", "smtppool.protocol", "smtppool.replies"],
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_without_a_c_compiler_the_wheel_is_plain_python(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy(ROOT / name, source)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(ROOT / "smtppool", source / "smtppool", ignore=ignore)
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler")}
    env.pop("SMTPPOOL_PURE_PYTHON", None)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert "smtppool: not compiled" in build.stdout + build.stderr  # it tried, then said so
    (wheel,) = tmp_path.glob("smtppool-*.whl")  # tagged for this platform all the same
    names = zipfile.ZipFile(wheel).namelist()
    assert "smtppool/connection.py" in names and "smtppool/py.typed" in names
    assert not [name for name in names if name.endswith(".so")]
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=120)
    probe = (
        "import smtppool; from smtppool.message import DataEncoder; "
        "print(smtppool.__file__, smtppool.compiled_modules(), DataEncoder().feed(b'.a\\n'))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,  # not the checkout, whose package would shadow the installed one
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    installed, compiled, encoded = run.stdout.split()
    assert installed == str(site / "smtppool" / "__init__.py")
    assert (compiled, encoded) == ("[]", r"b'..a\r\n'")  # the pure package at work
