"""The package's PEP 517 build backend: setuptools', with one difference.

A plain build (``pip install .``, ``pip install -e .``, ``pip wheel .``) needs nothing
but setuptools and gives plain Python.  ``SMTPPOOL_COMPILE=1`` asks for the compiled
wheel: only then is mypy, pinned, a build requirement, and setup.py compiles the
per-message modules with mypyc.  An editable install never compiles, so that an edit to
a ``.py`` file always takes effect.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

#: The mypy, and so the mypyc, a compiled wheel is built with: pinned, so that the same
#: source always gives the same extension.
MYPY = "mypy==2.4.1"


def compiling() -> bool:
    return os.environ.get("SMTPPOOL_COMPILE") == "1"


#: What any build needs beyond pyproject.toml's ``requires`` (setup.py declares no
#: ``setup_requires``, so setuptools' own answer is this, found by running setup.py,
#: which a compiled build cannot do before its mypy is installed).
WHEEL = ["wheel"]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*WHEEL, MYPY] if compiling() else WHEEL


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return WHEEL


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    os.environ.pop("SMTPPOOL_COMPILE", None)  # an editable install runs its source
    name: str = build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
