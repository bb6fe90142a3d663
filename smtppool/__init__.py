"""smtppool: a synchronous, thread-pooled SMTP transport for Python.

The public API is re-exported here; see README.rst for a tour.
"""

from __future__ import annotations

import logging
import sys
from importlib.machinery import EXTENSION_SUFFIXES

from .auth import Credentials
from .config import Options
from .connection import SMTPConnection
from .envelope import DSN, Envelope, SendResult
from .errors import (
    AuthenticationError,
    ConnectError,
    EnvelopeError,
    MessageError,
    PoolClosedError,
    PoolTimeoutError,
    ProtocolError,
    RateLimitError,
    SMTPError,
    SMTPTimeoutError,
    TLSError,
)
from .oauth2 import OAuth2
from .pool import SMTPPool
from .protocol import Extensions, Reply, SMTPProtocol

__version__ = "0.1.0"

__all__ = [
    "DSN",
    "AuthenticationError",
    "ConnectError",
    "Credentials",
    "Envelope",
    "EnvelopeError",
    "Extensions",
    "MessageError",
    "OAuth2",
    "Options",
    "PoolClosedError",
    "PoolTimeoutError",
    "ProtocolError",
    "RateLimitError",
    "Reply",
    "SMTPConnection",
    "SMTPError",
    "SMTPPool",
    "SMTPProtocol",
    "SMTPTimeoutError",
    "SendResult",
    "TLSError",
    "__version__",
    "compiled_modules",
]


def compiled_modules() -> list[str]:
    """The smtppool modules running as mypyc-compiled code: empty for a source install,
    the hot-path modules for a wheel built with ``SMTPPOOL_COMPILE=1``."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    return sorted(
        name
        for name, file in files.items()
        if name.startswith("smtppool.") and file is not None and file.endswith(suffixes)
    )


logging.getLogger("smtppool").addHandler(logging.NullHandler())
