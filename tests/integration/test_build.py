"""Building the package: plain Python unless SMTPPOOL_COMPILE=1 asks for the compiled
wheel, so that a checkout (an editable install) always runs its own source."""

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
        [
            "smtppool.channel",
            "smtppool.connection",
            "smtppool.message",
            "smtppool.pipelining",
            "smtppool.protocol",
            "smtppool.replies",
            "smtppool.stacking",
            "smtppool.states",
            "smtppool.transaction",
            "smtppool.transport",
        ],
    )


def test_a_checkout_runs_its_own_source() -> None:
    """``pip install -e .`` used to compile, leaving mypyc ``.so`` files in smtppool/
    that Python loaded instead of the ``.py`` files: an edit had no effect until a
    reinstall.  A checkout now holds no compiled module, so every module runs from
    the source file a contributor edits."""
    if not (ROOT / "setup.py").exists():
        pytest.skip("smtppool runs from an installed wheel here, not a checkout")
    package = Path(smtppool.__file__).parent
    assert package == ROOT / "smtppool"
    assert not [p.name for p in package.glob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    loaded = [m for name, m in sys.modules.items() if name.startswith("smtppool.")]
    assert loaded and all((m.__file__ or "").endswith(".py") for m in loaded)


def copy_checkout(source: Path) -> None:
    """What a source build needs of the checkout, without compiled or cached files."""
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy(ROOT / name, source)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(ROOT / "smtppool", source / "smtppool", ignore=ignore)
    shutil.copytree(ROOT / "tools", source / "tools", ignore=ignore)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_edit_takes_effect_in_an_editable_install_without_reinstalling(
    tmp_path: Path,
) -> None:
    """The README's own install, ``pip install -e``, of a copy of the checkout: edit a
    compiled-in-the-wheel module's source and the next run sees the edit."""
    if not (ROOT / "setup.py").exists():
        pytest.skip("smtppool runs from an installed wheel here, not a checkout")
    source = tmp_path / "source"
    source.mkdir()
    copy_checkout(source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("SMTPPOOL_COMPILE", "PYTHONPATH")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import smtppool, smtppool.protocol as p; "
        "print(smtppool.compiled_modules(), p.MAX_LINE_LENGTH)"
    )

    def run() -> str:
        out = subprocess.run(
            [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run() == "[] 8192"
    module = source / "smtppool" / "protocol.py"
    text = module.read_text()
    assert "MAX_LINE_LENGTH = 8 * 1024" in text
    module.write_text(text.replace("MAX_LINE_LENGTH = 8 * 1024", "MAX_LINE_LENGTH = 4321"))
    assert run() == "[] 4321"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plain_build_needs_no_compiler_nor_mypy(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    if not (ROOT / "setup.py").exists():
        pytest.skip("smtppool runs from an installed wheel here, not a checkout")
    copy_checkout(source)
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler")}
    env.pop("SMTPPOOL_COMPILE", None)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert "mypy" not in (build.stdout + build.stderr).lower()  # not even installed
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
