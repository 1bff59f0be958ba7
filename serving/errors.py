"""Serving exceptions, each with its HTTP status and OpenAI error type.

One mapper (serving.app) turns them into OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}`; the openai client picks its exception
class from the status.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every error the server reports to a client."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, str | None]]:
        """OpenAI's error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequestError(ServingError):
    """Invalid parameters (400)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ServingError):
    """Missing or wrong API key (401)."""

    status = 401
    type = "authentication_error"


class PermissionDeniedError(ServingError):
    """The key is valid but may not do this, e.g. admin routes with an inference key (403)."""

    status = 403
    type = "permission_error"


class ModelNotFoundError(ServingError):
    """The `model` names nothing servable: unknown base, adapter, version or alias (404)."""

    status = 404
    type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_found")


class NotFoundError(ServingError):
    """Something other than a model was not found, e.g. feedback for an unknown completion (404)."""

    status = 404
    type = "invalid_request_error"


class AdapterLoadError(ServingError):
    """The adapter exists but cannot be served on this engine (rank, targets, base model) (422)."""

    status = 422
    type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="adapter_not_loadable")


class OverloadedError(ServingError):
    """The request queue is full; retry later (429)."""

    status = 429
    type = "rate_limit_error"


class EngineDeadError(ServingError):
    """The inference engine has died; the server cannot serve (503)."""

    status = 503
    type = "server_error"


class UnavailableError(ServingError):
    """The server is starting or draining (503)."""

    status = 503
    type = "server_error"
