"""Sphinx configuration: the guide (the README) and the API reference from the docstrings.

Build with ``python -m sphinx -W -b html docs docs/_build`` (the test suite does, with
warnings as errors).  Links to the standard library resolve through a small inventory
of the Python objects these pages name (``python_inventory.py`` writes it at build
time), so the build needs no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from python_inventory import write_inventory  # noqa: E402

import smtppool  # noqa: E402

project = "smtppool"
author = "the smtppool authors"
release = version = smtppool.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
html_theme = "furo"
html_title = f"smtppool {release}"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(write_inventory(HERE / "_build" / "python.inv")))
}
