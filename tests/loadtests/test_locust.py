"""Load tests: a short, bounded Locust run against the session's real server, and the benchmark in reduced mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests.common import read_stats, read_trace, run_locust, summarize, tokens_in_window
from loadtests.record import read_result
from tests.serving.fixtures import Server

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("scenario", ["uniform", "powerlaw"])
def test_short_locust_run_has_no_failures_and_records_ttft_and_tpot(
    server: Server, tmp_path: Path, scenario: str
) -> None:
    env = {
        "LOADTEST_SCENARIO": scenario,
        "LOADTEST_MODELS": "support@1,contact@1,support:prod",
        "LOADTEST_MAX_TOKENS": "8",
        "LOADTEST_STREAM": "0.7",
        "LOADTEST_TRACE": str(tmp_path / "trace.jsonl"),
    }
    done = run_locust(server.url, users=3, seconds=5, prefix=tmp_path / "run", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_stats(tmp_path / "run")
    summary = summarize(rows)
    assert summary["requests"] > 5 and summary["failures"] == 0
    assert {"E2E", "TTFT", "TPOT"} <= set(summary["kinds"])
    assert summary["kinds"]["TTFT"]["p50_ms"] <= summary["kinds"]["E2E"]["p99_ms"]
    assert any(r["Name"].endswith("(cold)") for r in rows if r["Type"] == "E2E")
    assert (tmp_path / "run.html").is_file()
    # one line per completed request (Locust's CSV may miss those of its last second)
    trace = read_trace(tmp_path / "trace.jsonl")
    assert len(trace) >= summary["requests"]
    assert sum(r["tokens"] for r in trace) >= summary["output_tokens"]
    assert all(0 < r["tokens"] <= 8 for r in trace)
    streamed = [r for r in trace if r["first"] is not None]
    assert streamed and all(r["start"] < r["first"] <= r["end"] for r in streamed)
    assert 0 < tokens_in_window(trace, 5) <= sum(r["tokens"] for r in trace)


def test_throughput_counts_only_the_tokens_streamed_inside_the_window() -> None:
    """A server whose last requests stream after the window is not credited with those tokens."""
    trace: list[dict[str, Any]] = [
        {"start": 100.0, "first": 101.0, "end": 105.0, "tokens": 9},  # all inside
        {"start": 104.0, "first": 108.0, "end": 112.0, "tokens": 9},  # first token + half inside
        {"start": 109.0, "first": 111.0, "end": 115.0, "tokens": 5},  # started inside, streams after
        {"start": 102.0, "first": None, "end": 109.0, "tokens": 4},  # not streamed: at its end
        {"start": 103.0, "first": None, "end": 111.0, "tokens": 4},
    ]
    assert tokens_in_window(trace, 10) == pytest.approx(9 + 1 + 4 + 4)
    assert tokens_in_window(trace, 20) == 9 + 9 + 5 + 4 + 4
    assert tokens_in_window([], 10) == 0


def test_rounds_pool_every_request_of_every_round() -> None:
    """--rounds: throughput is the rounds' mean and the TTFT tail is taken over all their requests,
    so one slow request in a quiet round is the p99 it is, not 1% of a single window."""
    from loadtests.bench import pooled

    def request(start: float, ttft_s: float, tokens: int = 5) -> dict[str, Any]:
        return {
            "start": start,
            "first": start + ttft_s,
            "end": start + ttft_s + 0.1 * (tokens - 1),
            "tokens": tokens,
        }

    fast = [request(float(i), 0.1) for i in range(99)]
    common = {"output_tokens_per_s_started_in_window": 210.0}
    rounds = [
        {**common, "output_tokens_per_s": 200.0, "requests": 99, "failures": 0, "loads": 10, "evictions": 4},
        {
            **common,
            "output_tokens_per_s": 240.0,
            "requests": 101,
            "failures": 1,
            "loads": 30,
            "evictions": 16,
        },
    ]
    traces = [fast, [*fast, request(100.0, 2.0), {"start": 101.0, "first": None, "end": 102.0, "tokens": 1}]]
    out = pooled(rounds, traces)
    assert out["rounds"] == 2 and out["requests"] == 200 and out["failures"] == 1
    assert out["output_tokens_per_s"] == 220.0 and out["output_tokens_per_s_each"] == [200.0, 240.0]
    assert out["output_tokens_per_s_started_in_window"] == 210.0
    ttft = out["kinds"]["TTFT"]
    assert (
        ttft["count"] == 199
        and ttft["p50_ms"] == pytest.approx(100.0)
        and ttft["p99_ms"] == pytest.approx(100.0)
    )
    assert out["kinds"]["TPOT"]["p99_ms"] == pytest.approx(100.0)
    assert out["loads_per_1000_requests"] == 200.0 and out["evictions_per_1000_requests"] == 100.0
    # a tail of 5 requests in 104 is the p99
    slow = pooled(rounds, [fast, [request(100.0 + i, 2.0) for i in range(5)]])
    assert slow["kinds"]["TTFT"]["p99_ms"] == pytest.approx(2000.0)


def test_with_rounds_the_many_adapter_ratios_compare_pooled_with_pooled(tmp_path: Path) -> None:
    """--rounds: 64 vs 4 adapters compares the two pooled sides (not the single 4-adapter window
    measured before the rounds), and each round's ratio is listed; the PNG gets its third panel."""
    from loadtests.bench import SCENARIOS, plot, ratios

    def window(tok: float, ttft_p99: float) -> dict[str, Any]:
        return {
            "output_tokens_per_s": tok,
            "kinds": {"TTFT": {"p50_ms": 100.0, "p99_ms": ttft_p99}, "TPOT": {"p50_ms": 50.0}},
        }

    mixed = list(SCENARIOS)[-1]
    single = {label: window(300.0, 500.0) for label in SCENARIOS}
    rounds = {
        mixed: window(250.0, 700.0),
        "each": [
            {mixed: window(240.0, 0), "many 64 adapters": window(192.0, 0)},
            {mixed: window(260.0, 0), "many 64 adapters": window(221.0, 0)},
        ],
    }
    results = {
        "ours": {**single, "many 64 adapters": window(206.5, 1050.0), "rounds": rounds},
        "vllm": {
            **{label: window(50.0, 900.0) for label in SCENARIOS},
            "many 64 adapters": window(50.0, 7000.0),
        },
    }
    out = ratios(results)
    assert out[f"ours many 64 adapters/{mixed} throughput"] == pytest.approx(206.5 / 250.0, abs=1e-3)
    assert out[f"ours many 64 adapters/{mixed} TTFT p99"] == pytest.approx(1.5)
    assert out[f"ours many 64 adapters/{mixed} throughput, each round"] == [0.8, 0.85]
    assert out["throughput ours/vllm many 64 adapters"] == pytest.approx(4.13)
    plot(results, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_benchmark_reduced_mode_writes_ratios(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--reduced",
            "--out-dir",
            str(tmp_path),
            "--port",
            "8470",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = read_result(tmp_path / "bench_reduced.json")
    assert result["machine"]["cores"] >= 1 and "torch" in result["packages"] and result["commit"]
    report = result["figures"]
    assert set(report["servers"]) == {"ours", "vllm", "peft"}
    for server in report["servers"].values():
        for label in ("base", "1 adapter", "2 adapters"):
            assert server[label]["failures"] == 0 and server[label]["requests"] > 0
    assert "throughput ours/vllm base" in report["ratios"] and "throughput ours/peft base" in report["ratios"]
    cold = report["servers"]["ours"]["cold_vs_warm"]
    assert cold["cold_ms"] > 0 and cold["warm_ms"] > 0
    assert (tmp_path / "bench_reduced.png").read_bytes()[:4] == b"\x89PNG"
