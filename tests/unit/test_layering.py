"""Architecture check: the value and protocol layers never import I/O, threads or clocks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import smtppool

PACKAGE = Path(smtppool.__file__).parent
FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "time", "concurrent", "asyncio"}
PURE = [
    "replies.py",
    "states.py",
    "domains.py",
    "protocol.py",
    "message.py",
    "auth.py",
    "envelope.py",
    "errors.py",
    "pushback.py",
]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    found = imported_modules(PACKAGE / module) & FORBIDDEN
    # errors.py subclasses ssl.SSLError for TLSError, so that "except ssl.SSLError" catches it.
    allowed = {"ssl"} if module == "errors.py" else set()
    assert found <= allowed, f"{module} imports {sorted(found - allowed)}"


def test_only_the_transport_connection_and_sink_use_sockets() -> None:
    users = {p.name for p in PACKAGE.glob("*.py") if "socket" in imported_modules(p)}
    # handshake and connection pass a socket given by the caller on to the transport.
    assert users <= {"transport.py", "handshake.py", "connection.py", "sink.py"}


#: The package's layers, bottom first.  A module may import from the layers below its
#: own, never from its own or one above (so there is no import circle, type-only
#: imports included); the same list is drawn in README's Design section.
LAYERS: list[set[str]] = [
    {"replies", "domains", "states"},  # values that import nothing from the package
    {"errors"},
    {"message", "auth", "pushback", "ratelimit"},
    {"envelope", "oauth2"},
    {"jobs"},
    {"protocol", "config"},
    {"transport"},
    {"channel"},
    {"handshake", "login", "transaction"},
    {"pipelining", "stacking"},
    {"connection"},
    {"idle", "housekeeping"},
    {"connections"},
    {"workers"},
    {"pool"},
    {"batch", "sink", "contrib.redis_limiter"},
    {"testing", "console", "contrib.django", "contrib.flask", "contrib.celery"},
    {"cli"},
    {"__main__", "__init__", "contrib.__init__"},
]


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, as dotted names below ``smtppool``."""
    return imports_within(path.read_text(), path.relative_to(PACKAGE).with_suffix("").parts)


def imports_within(source: str, module: tuple[str, ...]) -> set[str]:
    """The package modules ``source`` (the module ``module``) imports: relative imports
    at any depth and absolute ones (``smtppool.x``), type-only ones too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "smtppool":
                    found.add("__init__")
                elif alias.name.startswith("smtppool."):
                    found.add(alias.name.removeprefix("smtppool."))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        absolute = node.module or ""
        if node.level:
            base, dotted = list(module[: len(module) - node.level]), absolute
        elif absolute == "smtppool" or absolute.startswith("smtppool."):
            base, dotted = [], absolute.removeprefix("smtppool").lstrip(".")
        else:
            continue
        if dotted:
            found.add(".".join([*base, *dotted.split(".")]))
            continue
        for alias in node.names:  # from . import x: a module, or a name of __init__
            name = ".".join([*base, alias.name])
            is_module = (PACKAGE / f"{name.replace('.', '/')}.py").exists()
            found.add(name if is_module else ".".join(base))
    return found


def layer_of(name: str) -> int:
    name = {"contrib": "contrib.__init__", "": "__init__"}.get(name, name)
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    names = {".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in all_modules()}
    assert names == set().union(*LAYERS)


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers_only(path: Path) -> None:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    upward = [m for m in package_imports(path) if layer_of(m) >= layer_of(name)]
    assert not upward, f"{name} (layer {layer_of(name)}) imports {upward} from its layer or above"


def upward_imports(source: str, name: str) -> list[str]:
    """What the layering check refuses in ``source`` as the module ``name``."""
    found = imports_within(source, tuple(name.split(".")))
    return sorted(m for m in found if layer_of(m) >= layer_of(name))


@pytest.mark.parametrize(
    ("added", "caught"),
    [
        ("from .protocol import Reply", ["protocol"]),
        ("from smtppool.protocol import Reply", ["protocol"]),
        ("import smtppool.pool", ["pool"]),
        ("import smtppool", ["__init__"]),
    ],
)
def test_an_upward_import_is_caught(added: str, caught: list[str]) -> None:
    """The check itself: errors importing the protocol (as it once did, for a type), the
    pool or the package, however the import is written."""
    source = (PACKAGE / "errors.py").read_text()
    assert upward_imports(source, "errors") == []
    assert upward_imports(f"{source}\n{added}\n", "errors") == caught


@pytest.mark.parametrize("doc", ["README.rst", "docs/architecture.rst"])
def test_the_docs_name_every_layer_in_order(doc: str) -> None:
    """README's Design section and docs/architecture.rst draw the same list: each names
    every module (the integrations by what they integrate), and every module of a layer
    is first named after every module of the layer below."""
    text = (Path(__file__).resolve().parents[2] / doc).read_text()  # the tests' checkout
    if doc == "README.rst":
        text = text[text.index("\nDesign\n") :]
    first: dict[str, int] = {}
    for layer in LAYERS:
        for name in layer - {"__main__", "__init__", "contrib.__init__"}:
            if name.startswith("contrib."):  # "the Django, Flask and Celery integrations"
                continue
            match = re.search(rf"``{re.escape(name)}``", text)
            assert match, f"{doc} does not name {name}"
            first[name] = match.start()
    for below, above in zip(LAYERS, LAYERS[1:], strict=False):
        named_below = [first[n] for n in below if n in first]
        named_above = [first[n] for n in above if n in first]
        if named_below and named_above:
            assert max(named_below) < min(named_above), (doc, sorted(below), sorted(above))
