"""OpenTelemetry traces: the session server (OTEL_EXPORTER_OTLP_ENDPOINT set, see fixtures.py)
exports each request's spans over OTLP/HTTP to a receiver, continuing the caller's `traceparent`."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from registry.routes import start_route
from registry.store import Registry
from serving import tracing
from tests.serving.fixtures import Server, wait_until
from tests.serving.otlp import ReceivedSpan, Receiver

ENGINE_SPANS = ("queue", "prefill", "decode")


def traced_post(server: Server, body: dict[str, object]) -> tuple[httpx.Response, str, str]:
    """POST /v1/completions with a fresh W3C traceparent: (response, trace id, parent span id)."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    return (
        httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=120),
        trace_id,
        parent,
    )


def spans_of(otlp: Receiver, trace_id: str, names: set[str]) -> dict[str, ReceivedSpan]:
    wait_until(lambda: names <= {s.name for s in otlp.trace(trace_id)}, timeout=30)
    return {s.name: s for s in otlp.trace(trace_id)}


@pytest.mark.slow
def test_a_routed_request_is_traced_from_resolve_and_load_to_decode(
    server: Server, adapters: tuple[Path, dict[str, str]], otlp: Receiver
) -> None:
    registry, refs = adapters
    reg = Registry(registry)
    src = reg.get(refs["contact"])
    # a version of a name nothing has asked for: not loaded ahead, so this request loads it
    fresh = reg.push("traced", src.path, src.lineage).ref
    body = {"model": fresh, "prompt": "Order 12345", "max_tokens": 5, "temperature": 0}
    r, trace_id, parent = traced_post(server, body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]

    spans = spans_of(otlp, trace_id, {"request", "resolve", "load", *ENGINE_SPANS})
    root = spans["request"]
    assert root.parent_id == parent and root.service == "lora-platform" and not root.error
    assert root.attributes == {
        "gen_ai.request.model": fresh,
        "lora.version": fresh,
        "gen_ai.request.id": r.json()["id"],
        "gen_ai.usage.prompt_tokens": usage["prompt_tokens"],
        "gen_ai.usage.completion_tokens": usage["completion_tokens"],
        "lora.status": "ok",
    }
    for name in ("resolve", "load", *ENGINE_SPANS):
        assert spans[name].parent_id == root.span_id, name
        assert root.start_ns <= spans[name].start_ns <= spans[name].end_ns <= root.end_ns, name
    assert spans["resolve"].attributes["lora.version"] == fresh
    assert spans["load"].attributes == {"lora.version": fresh}
    queue, prefill, decode = (spans[n] for n in ENGINE_SPANS)
    assert spans["load"].end_ns <= queue.start_ns  # vLLM's own timestamps, in order
    assert queue.end_ns == prefill.start_ns and prefill.end_ns == decode.start_ns

    # through an A/B route: the route and the variant it chose are on the spans
    start_route(reg, "tracedroute", [(fresh, 1.0)])
    wait_until(
        lambda: "tracedroute" in {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}, 5
    )
    r, trace_id, _ = traced_post(server, {**body, "model": "tracedroute"})
    assert r.status_code == 200, r.text
    spans = spans_of(otlp, trace_id, {"request", "resolve", *ENGINE_SPANS})
    routed = {"lora.route": "tracedroute", "lora.variant": fresh}
    assert routed.items() <= spans["request"].attributes.items()
    assert spans["request"].attributes["gen_ai.request.model"] == "tracedroute"
    assert routed.items() <= spans["resolve"].attributes.items()


@pytest.mark.slow
def test_a_refused_request_is_a_failed_trace(server: Server, otlp: Receiver) -> None:
    r, trace_id, parent = traced_post(server, {"model": "nosuch@1", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 404
    spans = spans_of(otlp, trace_id, {"request", "resolve"})
    assert spans["request"].parent_id == parent and spans["request"].error
    assert spans["resolve"].parent_id == spans["request"].span_id and spans["resolve"].error
    assert not set(spans) & {"load", *ENGINE_SPANS}


def test_tracing_is_off_without_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    assert not tracing.configured()
    assert tracing.start_request({"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}, {}) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.configured()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.configured()
