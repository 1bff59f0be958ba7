"""Prometheus metrics, labelled by the adapter version that served (and A/B route/variant)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.experiments.evidence import EvidenceCounters

_LAT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "route", "variant"]
        self.requests = Counter(
            "lora_requests",
            "Requests by served model and status",
            [*labels, "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "lora_tokens", "Tokens by served model and kind", [*labels, "kind"], registry=self.registry
        )
        self.ttft = Histogram(
            "lora_ttft_seconds", "Time to first token", labels, buckets=_LAT_BUCKETS, registry=self.registry
        )
        self.latency = Histogram(
            "lora_request_seconds", "End-to-end latency", labels, buckets=_LAT_BUCKETS, registry=self.registry
        )
        self.errors = Counter("lora_errors", "Errors by type", ["model", "type"], registry=self.registry)
        self.loaded_adapters = Gauge(
            "lora_loaded_adapters", "Adapters loaded in the engine", registry=self.registry
        )
        self.adapter_loads = Counter(
            "lora_adapter_loads", "Adapter loads into the engine", registry=self.registry
        )
        self.in_flight = Gauge(
            "lora_requests_in_flight", "Requests admitted and not finished", registry=self.registry
        )
        self.engine_running = Gauge(
            "lora_engine_requests", "Requests the engine is working on", registry=self.registry
        )
        self.rollout_step = Gauge(
            "lora_rollout_step", "Rollout step (1-based; 0 in pre-flight)", ["route"], registry=self.registry
        )
        self.rollout_weight = Gauge(
            "lora_rollout_candidate_weight",
            "Candidate's share of traffic, percent",
            ["route"],
            registry=self.registry,
        )
        self.rollout_decision = Gauge(
            "lora_rollout_decision",
            "1 for a rollout's last decision",
            ["route", "decision"],
            registry=self.registry,
        )
        self.evidence = EvidenceCounters()
        self.registry.register(self.evidence)

    def render(self) -> bytes:
        return generate_latest(self.registry)
