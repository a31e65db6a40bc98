"""Bearer-token check for the protected routes (``/segment*``, ``/metrics``, ``/v1/model``).

The token comes from the settings (a file or ``DISTILL_SERVE_TOKEN``), never a command-line
argument, and is required whenever the service binds a non-loopback address (enforced by
:class:`serve.settings.ServeSettings`). Both sides are hashed to SHA-256 and compared with
:func:`hmac.compare_digest`, so the comparison takes the same time whatever the guess.
``/healthz`` and ``/readyz`` stay open for probes.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.errors import ServeError

#: Documents the scheme in OpenAPI; the check itself is :func:`require_token` (our error body, not FastAPI's).
bearer_scheme = HTTPBearer(auto_error=False, description="Bearer token given to the service at start-up.")
CHALLENGE = 'Bearer realm="distill"'


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class TokenCheck:
    """Holds the expected token's digest; ``None`` when the service runs without a token."""

    def __init__(self, token: str | None) -> None:
        self._digest = _digest(token) if token is not None else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None) -> None:
        if self._digest is None:
            return
        if not authorization:
            raise ServeError(401, "unauthorized", "this route needs an Authorization: Bearer <token> header",
                             headers={"WWW-Authenticate": CHALLENGE})  # fmt: skip
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials or " " in credentials:
            raise ServeError(401, "unauthorized", "malformed Authorization header; expected 'Bearer <token>'",
                             headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_request"'})  # fmt: skip
        if not hmac.compare_digest(_digest(credentials), self._digest):
            raise ServeError(401, "unauthorized", "wrong bearer token",
                             headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'})  # fmt: skip


async def require_token(request: Request,
                        _documented: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:  # fmt: skip
    """Dependency of every protected route."""
    request.app.state.service.token_check.check(request.headers.get("authorization"))


__all__ = ["TokenCheck", "bearer_scheme", "require_token"]
