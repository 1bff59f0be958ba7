"""FastAPI dependencies: the server state and the API/admin key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from serving.errors import AuthenticationError, PermissionDeniedError, UnavailableError
from serving.state import ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState | None = getattr(request.app.state, "server", None)
    if state is None:
        raise UnavailableError("the server is starting", headers={"Retry-After": "1"})
    return state


State = Annotated[ServerState, Depends(get_state)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_api_key(request: Request) -> None:
    settings = request.app.state.settings
    if settings.api_key is None:
        return
    given = _bearer(request)
    if not (
        _matches(given, settings.api_key) or (settings.admin_key and _matches(given, settings.admin_key))
    ):
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")


def require_admin_key(request: Request) -> None:
    settings = request.app.state.settings
    if settings.admin_key is None:
        raise PermissionDeniedError("admin routes are disabled: start the server with --admin-key")
    if not _matches(_bearer(request), settings.admin_key):
        raise PermissionDeniedError("this route needs the admin key", code="admin_key_required")
