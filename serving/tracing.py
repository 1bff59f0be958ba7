"""OpenTelemetry traces of requests, exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Otherwise tracing is off: nothing is imported and
every function here returns at once.

A completion request is one `request` span (a child of the caller's W3C `traceparent`, when it
sends one) with children `resolve` (model reference to version, A/B variant), `load` (only when
the request loads its adapter into the engine) and `queue`, `prefill`, `decode`, drawn afterwards
from the engine's timestamps (vLLM's request stats; an engine without them gets `prefill` from
the engine call to the first token and `decode` to the last one). The standard OTel variables
apply: `OTEL_SERVICE_NAME` (default `lora-platform`), `OTEL_EXPORTER_OTLP_PROTOCOL`
(`http/protobuf`, the default, or `grpc`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`,
`OTEL_PROPAGATORS`, `OTEL_SDK_DISABLED`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

SERVICE_NAME = "lora-platform"
Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configured() -> bool:
    """Whether the environment asks for traces."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def init() -> bool:
    """Start the OTLP exporter once per process when the environment asks for traces; True when on.
    The provider is ours, not the global one, so vLLM's own instrumentation never exports through it."""
    global _tracer, _provider
    if _tracer is not None or not configured():
        return _tracer is not None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(_exporter()))
    _tracer = _provider.get_tracer("lora_platform.serving")
    return True


def _exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()


def flush() -> None:
    """Send the spans still queued (the server is stopping)."""
    if _provider is not None:
        _provider.force_flush(5000)


def start_request(headers: Mapping[str, str], attributes: Attributes) -> Span | None:
    """The `request` span, a child of the `traceparent` in `headers`; None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    return _tracer.start_span("request", extract(headers), SpanKind.SERVER, attributes)


@contextlib.contextmanager
def active(span: Span | None) -> Iterator[None]:
    """Make `span` the parent of the spans started in this block."""
    if span is None:
        yield
        return
    from opentelemetry.trace import use_span

    with use_span(span, record_exception=False, set_status_on_exception=False):
        yield


@contextlib.contextmanager
def span(name: str, attributes: Attributes) -> Iterator[Span | None]:
    """A span of this block, a child of the active one; an exception marks it failed."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def annotate(span: Span | None, attributes: Attributes) -> None:
    if span is not None:
        span.set_attributes(attributes)


def past(parent: Span | None, children: list[tuple[str, float, float]]) -> None:
    """Finished children of `parent`: (name, start, end), times in time.monotonic() seconds."""
    if parent is None or _tracer is None:
        return
    from opentelemetry.trace import set_span_in_context

    context = set_span_in_context(parent)
    offset = time.time_ns() - time.monotonic_ns()
    for name, start, end in children:
        child = _tracer.start_span(name, context, start_time=offset + int(start * 1e9))
        child.end(end_time=offset + int(end * 1e9))


def end(span: Span | None, attributes: Attributes, error: str | None = None) -> None:
    """End `span`; `error` (a short reason) marks it failed."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
