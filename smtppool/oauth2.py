"""OAuth2 access tokens for XOAUTH2: a thread-safe provider that refreshes when needed.

Refreshing uses ``requests-oauthlib`` (the ``oauth2`` extra), imported only when a
refresh actually happens, so a static access token needs no dependency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .auth import check_oauth2_value
from .errors import AuthenticationError

__all__ = ["OAuth2"]

#: Refresh this many seconds before the recorded expiry, to absorb clock skew and latency.
EXPIRY_MARGIN = 30.0


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
        try:
            session = OAuth2Session(self.client_id)
            token = session.refresh_token(
                self.token_url,
                refresh_token=self._refresh_token,
                timeout=self.timeout,
                **extra,
            )
        except Exception as exc:  # requests, oauthlib and JSON errors alike
            raise AuthenticationError(
                f"OAuth2 token refresh at {self.token_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._access_token = token["access_token"]
        self.expires = token.get("expires_at")
        self._refresh_token = token.get("refresh_token") or self._refresh_token
        if self.on_token is not None:
            self.on_token(dict(token))
