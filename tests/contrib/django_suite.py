"""Run Django's own SMTP backend tests with smtppool's backend in place of Django's.

Usage: ``python django_suite.py TESTS_DIR LABEL...``.  Django's
``django.core.mail.backends.smtp.EmailBackend`` is replaced by
``smtppool.contrib.django.EmailBackend`` before the tests are imported, and the tests
that inspect smtplib or the backend's private attributes are skipped by id.
"""

from __future__ import annotations

import os
import runpy
import sys
import unittest
from typing import Any

import django.core.mail.backends.smtp as django_smtp
from django.test.runner import DiscoverRunner

from smtppool.contrib.django import EmailBackend

SMTPLIB = "inspects or mocks smtplib, which smtppool does not use"
PRIVATE = "inspects the backend's private _partial_connection"
V52 = "mail.tests.SMTPBackendTests."
V61 = "mail.test_backends.SMTPBackendTests."
#: Full test id -> why it cannot apply to a pooled backend.
SKIPPED = {
    V52 + "test_connection_timeout_custom": SMTPLIB + " (connection.timeout)",
    V52 + "test_email_msg_uses_crlf": SMTPLIB + " (patches SMTP.send; CRLF tested by smtppool)",
    V52 + "test_reopen_replaces_partial_connection": PRIVATE,
    V61 + "test_connection_timeout_custom": SMTPLIB + " (connection.timeout)",
    V61 + "test_smtp_connection_uses_timeout": SMTPLIB + " (connection.timeout)",
    V61 + "test_serialized_message_uses_crlf_line_ending": SMTPLIB + " (mocks sendmail)",
    V61 + "test_auth_attempted": SMTPLIB + " (mocks SMTP.login; login at open() is what "
    "Django 5.2's version of this test checks, and it passes)",
    V61 + "test_smtp_connection_uses_host_and_port": SMTPLIB + " (mocks the SMTP class)",
    V61 + "test_reopen_replaces_partial_connection": PRIVATE,
}


def _skip_internal_tests(suite: Any) -> None:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            _skip_internal_tests(test)
        elif isinstance(test, unittest.TestCase) and test.id() in SKIPPED:
            reason = SKIPPED[test.id()]
            setattr(test, test._testMethodName, unittest.skip(reason)(lambda: None))


def main() -> None:
    tests_dir = os.path.abspath(sys.argv[1])
    django_smtp.EmailBackend = EmailBackend
    build_suite = DiscoverRunner.build_suite

    def build_suite_without_internals(self: Any, *args: Any, **kwargs: Any) -> Any:
        suite = build_suite(self, *args, **kwargs)
        _skip_internal_tests(suite)
        return suite

    DiscoverRunner.build_suite = build_suite_without_internals  # type: ignore[method-assign]
    sys.argv = [os.path.join(tests_dir, "runtests.py"), *sys.argv[2:], "--parallel", "1", "-v", "2"]
    os.chdir(tests_dir)
    sys.path.insert(0, tests_dir)
    runpy.run_path("runtests.py", run_name="__main__")


if __name__ == "__main__":
    main()
