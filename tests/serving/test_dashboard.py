"""Metrics others read: every PromQL expression of the Grafana dashboard names a series the real
server exposes, and `lora_requests_info` (vLLM's LoRA-affinity gauge, for llm-d) lists the adapter
of a running request."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry import rollouts
from registry.store import Registry
from serving.experiments.rollout import abort
from tests.serving.fixtures import Server, wait_until

DASHBOARD = Path(__file__).parents[2] / "docker" / "grafana" / "dashboard.json"
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
}


def expressions(node: object) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets' `expr` and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or durations)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    # Grafana's variable query
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r" \1 ", expr)
    names = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return names - PROMQL_WORDS


def exposed(url: str) -> set[str]:
    """Names of every sample on /metrics."""
    lines = httpx.get(url + "/metrics").text.splitlines()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if line and not line.startswith("#")}


def test_metric_names_are_found_in_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (model, le) (rate(lora_ttft_seconds_bucket{model=~"$model"}[$__rate_interval])))'
    assert metric_names(expr) == {"lora_ttft_seconds_bucket"}
    assert metric_names("label_values(lora_requests_total, model)") == {"lora_requests_total"}
    assert metric_names("sum(increase(a_total[5m])) / on (x) b") == {"a_total", "b"}


def test_the_dashboard_covers_what_operators_watch() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in (
        "requests/s",
        "tokens/s",
        "first token",
        "per output token",
        "errors",
        "evictions",
        "variant",
        "rollout",
        "queue",
    ):
        assert topic in titles, topic
    exprs = list(expressions(dash))
    assert any("histogram_quantile(0.95" in e for e in exprs) and any(
        "histogram_quantile(0.5" in e for e in exprs
    )
    names = set().union(*(metric_names(e) for e in exprs))
    assert names and all(n.startswith("lora_") for n in names), names


def start_rollout(registry: Path, refs: dict[str, str], name: str) -> None:
    """A rollout `name` between copies of the two session adapters (the server's controller runs it)."""
    reg = Registry(registry)
    baseline, candidate = (reg.get(refs[k]) for k in ("support", "contact"))
    spec = rollouts.RolloutSpec(
        candidate=reg.push(name, candidate.path, candidate.lineage).ref,
        baseline=reg.push(name, baseline.path, baseline.lineage).ref,
    )
    reg.rollouts().create(name, spec)


@pytest.mark.slow
def test_every_dashboard_metric_is_exposed_by_a_real_server(
    server: Server, adapters: tuple[Path, dict[str, str]]
) -> None:
    start_rollout(adapters[0], adapters[1], "dashroll")  # rollout series exist while one runs
    wait_until(
        lambda: 'lora_rollout_step{route="dashroll"} 1.0' in httpx.get(server.url + "/metrics").text, 60
    )
    abort(Registry(adapters[0]), "dashroll")
    client = server.client()
    client.completions.create(model=adapters[1]["support"], prompt="Order 12345", max_tokens=6, temperature=0)
    stream = client.completions.create(
        model="support:prod", prompt="Hello", max_tokens=4, temperature=0, stream=True
    )
    assert list(stream)
    assert (
        httpx.post(server.url + "/v1/completions", json={"model": "nosuch@1", "prompt": "x"}).status_code
        == 404
    )
    dash = json.loads(DASHBOARD.read_text())
    wanted = set().union(*(metric_names(e) for e in expressions(dash)))
    missing = wanted - exposed(server.url)
    assert not missing, f"the dashboard queries series the server does not expose: {sorted(missing)}"


def lora_info(url: str) -> dict[str, str]:
    """The labels of the `lora_requests_info` series."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("lora_requests_info{"):
            return dict(re.findall(r'(\w+)="([^"]*)"', line))
    raise AssertionError("no lora_requests_info series")


@pytest.mark.slow
def test_lora_requests_info_lists_the_adapter_of_a_running_request(
    server: Server, adapters: tuple[Path, dict[str, str]]
) -> None:
    ref = adapters[1]["contact"]
    body = {"model": ref, "prompt": "Order 12345", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the stream has begun
        wait_until(lambda: ref in lora_info(server.url)["running_lora_adapters"].split(","), timeout=30)
        info = lora_info(server.url)
        assert int(info["max_lora"]) == 2  # --max-loras of the session server
        for _ in lines:  # read it to the end
            pass
    wait_until(lambda: ref not in lora_info(server.url)["running_lora_adapters"], timeout=30)
