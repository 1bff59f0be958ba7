"""Serving exceptions, each with its HTTP status and OpenAI error type, and the one place a
client's error body is built.

`ServingError.envelope()` is OpenAI's `{"error": {"message", "type", "param", "code"}}`; the HTTP
mapper (serving.app), the body-size guard and the mid-stream error event all send it. The openai
client picks its exception class from the status. Messages for clients never name server files:
registry errors are translated by `from_registry`, unexpected exceptions become `InternalError`.

One class per meaning: a condition the registry already names (registry.errors.NotFoundError,
ConflictError, UnavailableError for a storage outage) is raised as the registry's error and
translated here, never mirrored by a class of the same name.
"""

from __future__ import annotations

from registry.errors import ConflictError, NotFoundError, RegistryError, StorageError


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

    @property
    def label(self) -> str:
        """How `lora_errors_total` labels this error: type and status."""
        return f"{self.type}:{self.status}"


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


class CompletionNotFoundError(ServingError):
    """Feedback names a completion id the server neither routed nor logged (404). A registry name,
    version or alias that does not exist is registry.errors.NotFoundError, also a 404 here."""

    status = 404
    type = "invalid_request_error"


class RequestTooLargeError(ServingError):
    """The request body is over the server's limit (413)."""

    status = 413
    type = "invalid_request_error"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body over {max_bytes} bytes", code="request_too_large")


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


class ClientGone(ServingError):
    """The client closed the connection; nobody reads the answer (nginx's 499)."""

    status = 499
    type = "client_closed_request"


class InternalError(ServingError):
    """An unexpected failure; the server log has the traceback, the client a generic message (500)."""

    def __init__(self, message: str = "internal error: the server log has the details") -> None:
        super().__init__(message)


class EngineDeadError(ServingError):
    """The inference engine has died; the server cannot serve (503)."""

    status = 503
    type = "server_error"


class ServiceUnavailableError(ServingError):
    """The server cannot answer right now; retry (503): it is starting or draining, a replica is gone,
    or the registry's catalog cannot be reached (registry.errors.UnavailableError, a storage outage,
    becomes this one at the HTTP boundary)."""

    status = 503
    type = "server_error"


class HTTPStatusError(ServingError):
    """A plain HTTP error by status: from the framework (unknown path 404, wrong method 405, ...), or
    a registry error the client caused (`from_registry`: not found 404, conflict 409)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"


def from_registry(exc: RegistryError) -> ServingError:
    """The client's view of a registry error: its status, and its message without server paths."""
    if isinstance(exc, StorageError):
        return ServiceUnavailableError(
            "the registry's catalog database is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    if isinstance(exc, NotFoundError):
        return HTTPStatusError(404, exc.message)
    if isinstance(exc, ConflictError):
        return HTTPStatusError(409, exc.message)
    return BadRequestError(exc.message)
