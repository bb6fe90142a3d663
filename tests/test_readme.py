"""The README's code snippets, run as written against local servers.

Each snippet tagged ``.. snippet: NAME`` is extracted, its example host and port are
pointed at a local sink, and it runs in a subprocess whose default trust store is the
test CA (``SSL_CERT_FILE``), so certificate checking stays on exactly as in the README.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

import smtppool
from smtppool import SMTPConnection, SMTPPool
from smtppool.config import OPTION_HELP, Options, describe_options
from smtppool.sink import Sink

from .integration.test_testing_plugin import USER_CODE

README = Path(__file__).resolve().parent.parent / "README.rst"
SinkFactory = Callable[..., Sink]


def snippet(name: str) -> str:
    text = README.read_text("utf-8")
    match = re.search(
        rf"^\.\. snippet: {re.escape(name)}\n\n\.\. code-block:: python\n\n"
        r"((?:    .*\n|\n)+)",
        text,
        re.MULTILINE,
    )
    assert match, f"README has no snippet {name!r}"
    return textwrap.dedent(match.group(1))


@pytest.fixture
def run_python(ca: trustme.CA, tmp_path: Path) -> Callable[[str], str]:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))

    def run(code: str) -> str:
        env = {**os.environ, "SSL_CERT_FILE": str(cafile)}
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    return run


def pointed_at(code: str, port: int) -> str:
    return (
        code.replace("smtp.example.com/", f"localhost:{port}/")
        .replace('"smtp.example.com"', '"localhost"')
        .replace("587", str(port))
    )


def test_pool_verify_and_cron_snippets(
    smtpd: SinkFactory, run_python: Callable[[str], str]
) -> None:
    app = smtpd(tls="starttls", credentials={"app@example.com": "app password"})
    news = smtpd(tls="implicit", credentials={"newsletter@example.com": "secret"})
    driver = f"""
{pointed_at(snippet("pool"), app.port)}
print(send_welcome("ann@example.org").response)
{snippet("verify")}
transport.close()

import smtppool
rows = lambda: range(3)
def render(row):
    return f"From: news@example.com\\r\\nTo: reader{{row}}@example.org\\r\\n\\r\\nIssue 1\\r\\n"
def mark_sent(row, response):
    print("sent", row, response[:3])
def mark_failed(row, *details):
    print("failed", row, details)
{pointed_at(snippet("cron"), news.port)}
"""
    out = run_python(driver)
    assert out.splitlines()[0].startswith("250 ")
    assert [line for line in out.splitlines() if line.startswith("sent")] == [
        "sent 0 250",
        "sent 1 250",
        "sent 2 250",
    ]
    assert app.messages[0].rcpt_tos == ("ann@example.org",)
    assert app.login_attempts[-1] == ("CRAM-MD5", "app@example.com", True)  # verify() logged in
    assert sorted(m.rcpt_tos[0] for m in news.messages) == [
        f"reader{i}@example.org" for i in range(3)
    ]


def test_django_settings_snippet(smtpd: SinkFactory, run_python: Callable[[str], str]) -> None:
    django = pytest.importorskip("django")
    name = "django-6.1" if django.VERSION >= (6, 1) else "django-5.2"
    sink = smtpd(tls="starttls", credentials={"app@example.com": "app password"})
    driver = f"""
import django
from django.conf import settings
namespace = {{}}
exec({pointed_at(snippet(name), sink.port)!r}, namespace)
settings.configure(DEFAULT_FROM_EMAIL="app@example.com",
                   **{{k: v for k, v in namespace.items() if k.isupper()}})
django.setup()
from django.core import mail
print(mail.send_mail("Welcome", "Thanks", None, ["ann@example.org"]))
"""
    assert run_python(driver).strip() == "1"
    [received] = sink.messages
    assert received.rcpt_tos == ("ann@example.org",) and received.login == "app@example.com"


def test_flask_snippet(smtpd: SinkFactory, run_python: Callable[[str], str]) -> None:
    pytest.importorskip("flask")
    sink = smtpd(tls="starttls", credentials={"app@example.com": "app password"})
    driver = f"""
{pointed_at(snippet("flask"), sink.port)}
response = app.test_client().post("/signup", data={{"email": "ann@example.org"}})
print(response.status_code, response.text)
mail.close()
"""
    assert run_python(driver).strip() == "200 ok"
    [received] = sink.messages
    assert received.mail_from == "app@example.com" and b"My App" in received.data


def test_pytest_plugin_snippet(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_readme_plugin=USER_CODE + snippet("pytest-plugin"))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def readme_option_rows() -> dict[str, tuple[str, str]]:
    """The README's option table: name -> (default, meaning), continuation lines joined."""
    text = README.read_text("utf-8")
    lines = text[text.index("\nOptions\n-------") :].splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=" * 24 + " ")]
    rows: dict[str, tuple[str, str]] = {}
    name = ""
    for line in lines[borders[1] + 1 : borders[2]]:
        cell = line[:25].strip().strip("`")
        if cell:
            name = cell
            rows[name] = (line[25:41].strip().strip("`"), line[41:].strip())
        else:
            default, meaning = rows[name]
            rows[name] = (default, f"{meaning} {line.strip()}")
    return rows


def test_the_option_table_and_the_docstrings_say_the_same() -> None:
    """README, help(SMTPPool) and help(Options) all come from, or are checked against,
    smtppool.config.OPTION_HELP and the Options defaults."""
    rows = readme_option_rows()
    assert list(rows) == list(OPTION_HELP)
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for name, (default, meaning) in rows.items():
        assert meaning == OPTION_HELP[name], name
        assert ast.literal_eval(default) == defaults.get(name), name
    assert set(defaults) <= set(OPTION_HELP) | {"options"}  # every field documented
    for cls in (SMTPPool, Options):
        assert describe_options() in inspect.cleandoc(cls.__doc__ or ""), cls
    # mypyc keeps no docstring on a compiled class; the source's points at Options.
    if "smtppool.connection" not in smtppool.compiled_modules():
        assert "help(smtppool.Options)" in (SMTPConnection.__doc__ or "")


def test_sink_snippet(run_python: Callable[[str], str]) -> None:
    """The README's sink example: a login over plaintext loopback, then the envelope."""
    out = run_python(snippet("sink"))
    assert "Envelope(mail_from='a@example.com'" in out and "[('CRAM-MD5', 'u', True)]" in out
