"""The HTTP front door (pure ASGI, in front of FastAPI): keys checked from the headers before a
byte of the body is read, the body limit counted as the bytes arrive, an optional allowed-hosts
list, and security headers on every response. Also the error response every error goes out as.

Pure ASGI rather than FastAPI dependencies: FastAPI reads and parses the whole body before any
dependency runs, so a dependency cannot refuse an unauthenticated or oversized upload in time."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.deps import bearer_token
from serving.errors import BadRequestError, HTTPStatusError, RequestTooLargeError, ServingError

log = logging.getLogger("lora_platform.serving")

KeyCheck = Callable[[str | None], None]
"""Raises a ServingError unless the bearer token (None: no header) may use the path."""

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]
"""On every response: no MIME sniffing, no framing (clickjacking), no Referer leaving the pages."""


class ErrorResponse(JSONResponse):
    """A client's error body: `ServingError.envelope()`, ASCII-escaped so that any text a client
    sent (lone surrogates included) can be echoed back."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error_response(exc: ServingError) -> ErrorResponse:
    return ErrorResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)


class BodyRefused(StarletteHTTPException):
    """Raised from the guarded `receive` once a body passes the limit or stalls: FastAPI re-raises
    an HTTPException met while reading the body, so the route stops at once (Guard has already
    sent the 413 or 408)."""

    def __init__(self, status: int) -> None:
        super().__init__(status, "request body refused")


def body_timeout_error(seconds: float) -> ServingError:
    return HTTPStatusError(408, f"no request body bytes for {seconds:g} s: send the body without pauses")


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """`host` (the Host header without its port) matches an entry: exact, `*.example.com`, or `*`.
    Hand-written rather than Starlette's TrustedHostMiddleware, whose refusal is a plain-text 400
    and not our error envelope; the matching rule is the same."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class Guard:
    """Pure ASGI middleware. `checks` maps a path prefix (`/v1` covers `/v1` and `/v1/...`) to its
    key check; `max_bytes` bounds the body, whether sent with Content-Length or chunked; a body
    that sends nothing for `body_timeout_s` gets 408 (a slow-body slowloris holds no connection
    for long); with `allowed_hosts`, any other Host header is refused (DNS rebinding)."""

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        checks: Mapping[str, KeyCheck] | None = None,
        allowed_hosts: Sequence[str] = (),
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.checks = dict(checks or {})
        self.allowed_hosts = list(allowed_hosts)
        self.body_timeout_s = body_timeout_s

    def _check(self, path: str) -> KeyCheck | None:
        for prefix, check in self.checks.items():
            if path == prefix or path.startswith(prefix + "/"):
                return check
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = Headers(scope=scope)
        try:
            self._admit(scope["path"], headers)
        except ServingError as exc:
            await _refuse(scope, receive, send, exc)
            return
        await self._run(scope, receive, send)

    def _admit(self, path: str, headers: Headers) -> None:
        """Everything decided from the request line and headers alone."""
        if self.allowed_hosts and not host_allowed(headers.get("host", ""), self.allowed_hosts):
            raise BadRequestError("this host name is not served here", code="invalid_host")
        check = self._check(path)
        if check is not None:
            check(bearer_token(headers))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise RequestTooLargeError(self.max_bytes)

    async def _run(self, scope: Any, receive: Any, send: Any) -> None:
        received, started, refused, body_done = 0, False, False, False

        async def refuse(exc: ServingError) -> NoReturn:
            nonlocal refused
            refused = True
            if not started:
                await _refuse(scope, receive, send, exc)
            raise BodyRefused(exc.status)

        async def counted_receive() -> Any:
            nonlocal received, body_done
            if body_done:  # after the body: a wait for the disconnect (a stream), never timed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                await refuse(body_timeout_error(self.body_timeout_s))
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await refuse(RequestTooLargeError(self.max_bytes))
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused and not started:
                return  # our 413/408 went out: whatever the app answers after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyRefused:
            if not refused:
                raise


def _with_headers(send: Any) -> Any:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def _refuse(scope: Any, receive: Any, send: Any, exc: ServingError) -> None:
    """Send `exc` as the response, counted in `lora_errors_total` like any other error."""
    state = getattr(getattr(scope.get("app"), "state", None), "server", None)
    if state is not None:
        state.metrics.errors.labels("", exc.label).inc()
    await error_response(exc)(scope, receive, send)
