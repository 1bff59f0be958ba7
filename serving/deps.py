"""FastAPI dependencies: the server state and the API/admin/metrics key checks.

The same checks run twice: in `serving.guard.Guard` (pure ASGI, from the headers alone, before a
byte of the body is read) and here, as route dependencies (so a route mounted on another app, such
as the Ray router's `/admin/replicas`, is never left open)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request

from serving.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from serving.state import ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState | None = getattr(request.app.state, "server", None)
    if state is None:
        raise ServiceUnavailableError("the server is starting", headers={"Retry-After": "1"})
    return state


State = Annotated[ServerState, Depends(get_state)]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer TOKEN`: None without such a header, "" for an empty one."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def key_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches (nor does a missing key)."""
    if not given or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def check_api_key(settings: Any, token: str | None) -> None:
    """Inference routes: open without an API key; else the API key (or the admin key)."""
    if settings.api_key is None:
        return
    if not token:
        raise AuthenticationError(
            "No API key provided: send `Authorization: Bearer KEY`.", code="invalid_api_key"
        )
    if not (key_matches(token, settings.api_key) or key_matches(token, settings.admin_key)):
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")


def check_admin_key(settings: Any, token: str | None) -> None:
    """Admin routes: disabled without an admin key; 401 without a token, 403 with another one."""
    if settings.admin_key is None:
        raise PermissionDeniedError("admin routes are disabled: start the server with --admin-key")
    if not token:
        raise AuthenticationError(
            "this route needs the admin key: send `Authorization: Bearer KEY`", code="admin_key_required"
        )
    if not key_matches(token, settings.admin_key):
        raise PermissionDeniedError("this route needs the admin key", code="admin_key_required")


def check_metrics_key(settings: Any, token: str | None) -> None:
    """/metrics: open without a metrics key; else the metrics key (or the admin key)."""
    key = getattr(settings, "metrics_key", None)
    if key is None:
        return
    if not (key_matches(token, key) or key_matches(token, settings.admin_key)):
        raise AuthenticationError("/metrics needs the metrics key", code="invalid_api_key")


def require_api_key(request: Request) -> None:
    check_api_key(request.app.state.settings, bearer_token(request.headers))


def require_admin_key(request: Request) -> None:
    check_admin_key(request.app.state.settings, bearer_token(request.headers))


def require_metrics_key(request: Request) -> None:
    check_metrics_key(request.app.state.settings, bearer_token(request.headers))
