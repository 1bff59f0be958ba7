"""Prometheus metrics, labelled by the adapter version that served (and A/B route/variant)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.experiments.drift import VersionDrift
from serving.experiments.evidence import EvidenceCounters

log = logging.getLogger("lora_platform.serving")

_LAT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)


class LoraRequestsInfo(Collector):
    """`lora_requests_info`, shaped like vLLM's `vllm:lora_requests_info` so LoRA-affinity routers
    (llm-d, Gateway API Inference Extension) can read it: one series whose labels list the adapter
    versions of running and waiting requests (comma-separated) and `max_lora`, and whose value is
    the time (Unix seconds) the lists last changed. Waiting: admitted, no token yet (queued or in
    prefill); running: producing tokens."""

    def __init__(self) -> None:
        self.max_lora = 0
        self.waiting: Tally[str] = Tally()
        self.running: Tally[str] = Tally()
        self.changed = time.time()
        self._lock = threading.Lock()

    def admitted(self, model: str) -> None:
        with self._lock:
            self.waiting[model] += 1
            self.changed = time.time()

    def first_token(self, model: str) -> None:
        with self._lock:
            self.waiting -= Tally({model: 1})
            self.running[model] += 1
            self.changed = time.time()

    def finished(self, model: str, started: bool) -> None:
        with self._lock:
            if started:
                self.running -= Tally({model: 1})
            else:
                self.waiting -= Tally({model: 1})
            self.changed = time.time()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "lora_requests_info",
            "Adapter versions of running and waiting requests (value: Unix time of the last change)",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        with self._lock:
            running, waiting = ",".join(sorted(self.running)), ",".join(sorted(self.waiting))
            family.add_metric([str(self.max_lora), running, waiting], self.changed)
        yield family


class DriftGauges(Collector):
    """Drift of each logged version (`serving/experiments/drift.py`), set by the server's payload
    upkeep: `lora_drift_reference` and `lora_drift_current` (the signal's value in each window),
    `lora_drift_p_value`, and `lora_drift_moved` (1 when the change is significant)."""

    def __init__(self) -> None:
        self._reports: list[VersionDrift] = []

    def observe(self, reports: list[VersionDrift]) -> None:
        self._reports = list(reports)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["version", "signal"]
        families = {
            "reference": GaugeMetricFamily(
                "lora_drift_reference", "Signal in the version's first days in service", labels=labels
            ),
            "current": GaugeMetricFamily("lora_drift_current", "Signal in the recent window", labels=labels),
            "p_value": GaugeMetricFamily("lora_drift_p_value", "p-value of the change", labels=labels),
        }
        moved = GaugeMetricFamily("lora_drift_moved", "1 when the signal moved significantly", labels=labels)
        for report in self._reports:
            for sig in report.signals:
                key = [report.version, sig.signal]
                for attr, family in families.items():
                    value = getattr(sig, attr)
                    if value is not None:
                        family.add_metric(key, value)
                moved.add_metric(key, float(sig.moved))
        yield from families.values()
        yield moved


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
        self.tpot = Histogram(
            "lora_tpot_seconds",
            "Time per output token after the first (mean of each request)",
            labels,
            buckets=_TPOT_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter("lora_errors", "Errors by type", ["model", "type"], registry=self.registry)
        self.loaded_adapters = Gauge(
            "lora_loaded_adapters", "Adapters loaded in the engine", registry=self.registry
        )
        self.adapter_loads = Counter(
            "lora_adapter_loads",
            "Adapter loads into the engine, by trigger: a request, or ahead of requests (a reference in use moved)",
            ["trigger"],
            registry=self.registry,
        )
        self.adapter_load_seconds = Histogram(
            "lora_adapter_load_seconds",
            "Time to verify (sha256), validate and load an adapter version",
            ["trigger"],
            buckets=_LAT_BUCKETS,
            registry=self.registry,
        )
        self.adapter_last_load = Gauge(
            "lora_adapter_last_load_timestamp_seconds",
            "Unix time the last adapter load finished, by trigger",
            ["trigger"],
            registry=self.registry,
        )
        self.adapter_evictions = Counter(
            "lora_adapter_evictions",
            "Idle adapters evicted to make room (fewest recent requests first)",
            registry=self.registry,
        )
        self.lora_info = LoraRequestsInfo()
        self.registry.register(self.lora_info)
        self.in_flight = Gauge(
            "lora_requests_in_flight", "Requests admitted and not finished", registry=self.registry
        )
        self.engine_running = Gauge(
            "lora_engine_requests", "Requests the engine is working on", registry=self.registry
        )
        self.rollout_step = Gauge(
            "lora_rollout_step",
            "Rollout step (1-based; 0 in pre-flight and the shadow phase)",
            ["route"],
            registry=self.registry,
        )
        self.rollout_phase = Gauge(
            "lora_rollout_phase",
            "1 for a rollout's phase (preflight, shadow, steps, ended)",
            ["route", "phase"],
            registry=self.registry,
        )
        self.rollout_weight = Gauge(
            "lora_rollout_candidate_weight_ratio",
            "Candidate's share of the route's traffic (0 to 1)",
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
        self.payload_writer = EvidenceCounters("lora_payloads", "logged payload")
        self.registry.register(self.payload_writer)
        self.drift = DriftGauges()
        self.registry.register(self.drift)

    def loaded(self, model: str, trigger: str, seconds: float) -> None:
        """One adapter version loaded (`trigger`: "request" or "ahead") in `seconds`."""
        self.adapter_loads.labels(trigger).inc()
        self.adapter_load_seconds.labels(trigger).observe(seconds)
        self.adapter_last_load.labels(trigger).set(time.time())
        log.info("loaded %s (%s) in %.0f ms", model, trigger, seconds * 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
