"""OAuth2 access tokens for XOAUTH2: a thread-safe provider that refreshes when needed.

Refreshing uses ``requests-oauthlib`` (the ``oauth2`` extra), imported only when a
refresh actually happens, so a static access token needs no dependency.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .auth import check_oauth2_value
from .errors import AuthenticationError

__all__ = ["OAuth2"]

#: Refresh this many seconds before the recorded expiry, to absorb clock skew and latency.
EXPIRY_MARGIN = 30.0
#: The libraries a refresh runs through; requests-oauthlib logs request bodies, headers
#: and the tokens it obtains at DEBUG.
REFRESH_LOGGERS = ("requests_oauthlib", "oauthlib", "requests", "urllib3")
#: A secret in a form body, a JSON or dict text, or a header: name, separator, value.
_SECRET_FIELD = re.compile(
    r"""((?:access|refresh|id)_token|client_secret|password|authorization)"""
    r"""(["']?\s*[:=]\s*["']?)((?:basic|bearer)\s+)?[^"'&\s,}]+""",
    re.IGNORECASE,
)


class SecretFilter(logging.Filter):
    """Masks secrets in the records of the refresh libraries: token, secret and password
    fields by name, and the secrets of refreshes under way by value."""

    def __init__(self) -> None:
        super().__init__()
        self._uses: dict[str, int] = {}  # value -> refreshes using it; under the lock
        self._masked: tuple[str, ...] = ()  # its keys, replaced whole: read without a lock
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            redacted = mask_secrets(message, self._masked)
        except Exception:  # a record that cannot be formatted is the handler's to report
            return True
        if redacted != message:
            record.msg, record.args = redacted, None
        return True

    @contextmanager
    def guarding(self, *secrets: str | None) -> Iterator[None]:
        """Attach to every refresh library's logger and mask ``secrets`` meanwhile."""
        values = [s for s in secrets if s]
        with self._lock:
            for value in values:
                self._uses[value] = self._uses.get(value, 0) + 1
            self._masked = tuple(self._uses)
            self._attach()
        try:
            yield
        finally:
            with self._lock:
                self._attach()  # loggers the call created, for next time
                for value in values:
                    self._uses[value] -= 1
                    if not self._uses[value]:
                        del self._uses[value]
                self._masked = tuple(self._uses)

    def _attach(self) -> None:
        # A logger's filters see only its own records, not those of its children.
        manager = logging.Logger.manager
        for name in list(manager.loggerDict):
            if name.split(".")[0] in REFRESH_LOGGERS:
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secret fields (``refresh_token=...``, ``'access_token': '...'``,
    ``Authorization: Basic ...``) and the given secret values replaced by ``****``."""
    text = _SECRET_FIELD.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}****", text)
    for secret in secrets:
        text = text.replace(secret, "****")
    return text


_SECRET_FILTER = SecretFilter()


class OAuth2:
    """XOAUTH2 credentials: a user and an access token, refreshed through a token URL.

    ``expires`` is the token's expiry as a Unix timestamp.  A missing or expired token
    is refreshed with ``refresh_token`` at ``token_url``; the new token is passed to
    ``on_token(token)`` so the caller can store it.  Shared safely by many connections.
    """

    def __init__(
        self,
        *,
        user: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        expires: float | None = None,
        token_url: str | None = None,
        on_token: Callable[[Mapping[str, Any]], object] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(user, str) or not user:
            raise ValueError("OAuth2 needs a user (the mailbox address)")
        check_oauth2_value("user", user)
        if access_token is not None:
            check_oauth2_value("access token", access_token)
        if access_token is None and not (refresh_token and token_url and client_id):
            raise ValueError(
                "OAuth2 needs an access_token, or refresh_token, token_url and client_id"
            )
        self.user = user
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self._access_token = access_token
        self.expires = expires
        self.token_url = token_url
        self.on_token = on_token
        self.timeout = timeout
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OAuth2(user={self.user!r}, client_id={self.client_id!r}, access_token='****')"

    @property
    def can_refresh(self) -> bool:
        return bool(self._refresh_token and self.token_url and self.client_id)

    def _is_fresh(self) -> bool:
        if self._access_token is None:
            return False
        return self.expires is None or time.time() < self.expires - EXPIRY_MARGIN

    def get_token(self) -> str:
        """Return a usable access token, refreshing it first if missing or expired."""
        with self._lock:
            if not self._is_fresh():
                self._refresh_locked()
            assert self._access_token is not None
            return self._access_token

    def refresh(self, rejected: str | None = None) -> str:
        """Fetch a new token, unless another thread already replaced ``rejected``."""
        with self._lock:
            if rejected is None or self._access_token == rejected:
                self._refresh_locked()
            assert self._access_token is not None
            return self._access_token

    def _refresh_locked(self) -> None:
        if not self.can_refresh:
            raise AuthenticationError(
                "OAuth2 access token is missing or expired and cannot be refreshed "
                "(refresh_token, token_url and client_id are needed)"
            )
        try:
            from requests_oauthlib import OAuth2Session
        except ImportError as exc:
            raise ImportError(
                "refreshing OAuth2 tokens needs requests-oauthlib: pip install 'smtppool[oauth2]'"
            ) from exc
        extra = {"client_id": self.client_id}
        if self._client_secret is not None:
            extra["client_secret"] = self._client_secret
        secrets = (self._client_secret, self._refresh_token, self._access_token)
        failure: str | None = None
        try:
            with _SECRET_FILTER.guarding(*secrets):
                session = OAuth2Session(self.client_id)
                token = session.refresh_token(
                    self.token_url,
                    refresh_token=self._refresh_token,
                    timeout=self.timeout,
                    **extra,
                )
        except Exception as exc:  # requests, oauthlib and JSON errors alike
            failure = mask_secrets(f"{type(exc).__name__}: {exc}", [s for s in secrets if s])
        if failure is not None:  # raised here, so the original (which may quote the
            # request, secrets and all) is neither its cause nor its context
            raise AuthenticationError(f"OAuth2 token refresh at {self.token_url} failed: {failure}")
        access_token, expires = token.get("access_token"), token.get("expires_at")
        try:
            self._access_token = check_oauth2_value("access token", access_token)
        except (TypeError, ValueError):
            raise AuthenticationError(
                f"OAuth2 token refresh at {self.token_url} returned no usable access token"
            ) from None
        usable = isinstance(expires, (int, float)) and math.isfinite(expires)
        self.expires = float(expires) if usable else None  # a bad expiry: refreshed on refusal
        self._refresh_token = token.get("refresh_token") or self._refresh_token
        if self.on_token is not None:
            self.on_token(dict(token))
