"""Rollout decisions on synthetic evidence: pass, fail per gate, wait, pause; gate parsing."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from registry.rollouts import RolloutSpec
from serving.experiments.gates import GateError, Sample, gate_set, parse_gate
from serving.experiments.rollout import Evidence, decide

SPEC = RolloutSpec("s@2", "s@1", steps=(5.0, 50.0, 100.0), min_requests=20, max_wait_s=60)


def sample(
    n: int, *, errors: int = 0, latency: float = 0.1, thumbs_up: float | None = None, seed: int = 0
) -> Sample:
    rng = random.Random(seed)
    reqs = [
        {
            "status": "error" if i < errors else "ok",
            "latency_s": latency * rng.uniform(0.9, 1.1),
            "ttft_s": latency / 2 * rng.uniform(0.9, 1.1),
            "completion_tokens": 8 + rng.randint(-1, 1),
        }
        for i in range(n)
    ]
    fb = [] if thumbs_up is None else [{"thumbs": int(i < thumbs_up * n), "score": None} for i in range(n)]
    return Sample.of(reqs, fb)


def ev(base: Sample, cand: Sample, elapsed: float = 1.0) -> Evidence:
    return Evidence(base, cand, elapsed)


def test_a_candidate_like_the_baseline_passes() -> None:
    d = decide(SPEC, 0, ev(sample(200, seed=1), sample(60, seed=2)))
    assert d.kind == "pass", d.reason
    assert d.numbers["gates"]["error_rate"]["outcome"] == "pass"
    assert d.numbers["candidate"]["requests"] == 60


def test_a_candidate_that_errors_fails_on_error_rate() -> None:
    d = decide(SPEC, 0, ev(sample(200), sample(40, errors=10)))
    assert d.kind == "fail"
    assert "error_rate +25.00pt" in d.reason and "p=" in d.reason


def test_one_empty_answer_against_many_clean_ones_is_no_reason_to_roll_back() -> None:
    # seen in a real rollout: at the last step 1 empty completion in 38 candidate requests against
    # 0 in 300 baseline ones made the normal approximation "significant" (p=0.0024): rolled back
    d = decide(SPEC, 2, ev(sample(300), replace(sample(38), empty=1)))
    assert d.numbers["gates"]["empty_rate"]["outcome"] != "fail", d.reason
    assert d.kind != "fail", d.reason
    many = decide(SPEC, 2, ev(sample(300), replace(sample(38), empty=6)))  # 16% empty: a real problem
    assert many.kind == "fail" and "empty_rate" in many.reason


def test_worse_feedback_fails_on_thumbs_up() -> None:
    d = decide(SPEC, 1, ev(sample(100, thumbs_up=0.9), sample(100, thumbs_up=0.4)))
    assert d.kind == "fail" and "thumbs_up" in d.reason and "error_rate" not in d.reason


def test_equal_feedback_passes_and_no_feedback_skips_the_gate() -> None:
    assert decide(SPEC, 1, ev(sample(60, thumbs_up=1.0), sample(60, thumbs_up=1.0))).kind == "pass"
    d = decide(SPEC, 1, ev(sample(60), sample(60)))
    assert d.numbers["gates"]["thumbs_up"]["outcome"] == "skipped"


def test_slower_candidate_fails_on_latency() -> None:
    d = decide(SPEC, 1, ev(sample(100, latency=0.1), sample(100, latency=0.3)))
    assert d.kind == "fail" and "latency_p95 3.00x" in d.reason


def test_too_few_requests_waits_then_pauses_with_a_reason() -> None:
    d = decide(SPEC, 0, ev(sample(200), sample(3), elapsed=10))
    assert d.kind == "wait" and "3 candidate requests, need 20" in d.reason
    d = decide(SPEC, 0, ev(sample(200), sample(3), elapsed=61))
    assert d.kind == "pause" and "need 20" in d.reason


def test_a_small_difference_within_noise_is_inconclusive_not_a_pass() -> None:
    # 1 error in 25 vs 0 in 25: not significantly worse, and not shown to be within +1pt
    d = decide(SPEC, 1, ev(sample(25, seed=3), sample(25, errors=1, seed=4)))
    assert d.kind == "wait" and "error_rate" in d.reason


def test_feedback_below_min_feedback_is_not_judged_and_does_not_hold_the_step() -> None:
    one_vote = Sample.of(sample_rows(60), [{"thumbs": 0, "score": None}])
    d = decide(SPEC, 1, ev(sample(60, thumbs_up=1.0), one_vote))
    assert d.kind == "pass", d.reason
    assert d.numbers["gates"]["thumbs_up"]["outcome"] == "little-feedback"
    assert "not judged: thumbs_up (60 baseline and 1 candidate feedback events, need 20 each)" in d.reason


def test_too_little_feedback_holds_the_step_when_every_other_gate_is_off() -> None:
    others = {g: "=off" for g in ("error_rate", "empty_rate", "latency_p95", "ttft_p95", "length_p50")}
    spec = replace(SPEC, gates=others)
    one_vote = Sample.of(sample_rows(60), [{"thumbs": 1, "score": None}])
    d = decide(spec, 1, ev(sample(60, thumbs_up=1.0), one_vote))
    assert d.kind == "wait" and "need 20 each" in d.reason


def test_feedback_gates_have_their_own_minimum_and_margin() -> None:
    # 60 requests and 15 feedback events each: judged with --min-feedback 10, not with the default 20
    votes = [{"thumbs": 1, "score": None}] * 15
    base = Sample.of(sample_rows(60), votes)
    cand = Sample.of(sample_rows(60), [{**v, "thumbs": 0} for v in votes])
    assert decide(SPEC, 1, ev(base, cand)).kind == "pass"
    d = decide(replace(SPEC, min_feedback=10), 1, ev(base, cand))
    assert d.kind == "fail" and "thumbs_up -100.00pt" in d.reason
    # 90% vs 70% thumbs up: worse beyond the default -5pt, within a -30pt margin
    base, cand = sample(100, thumbs_up=0.9), sample(100, thumbs_up=0.7)
    assert decide(SPEC, 1, ev(base, cand)).kind == "fail"
    d = decide(replace(SPEC, gates={"thumbs_up": ">=-30pt"}), 1, ev(base, cand))
    assert d.kind == "pass" and d.numbers["gates"]["thumbs_up"]["outcome"] == "pass"


def test_the_shadow_phase_judges_errors_and_latency_never_feedback() -> None:
    base = sample(100, thumbs_up=0.9)
    d = decide(SPEC, -1, ev(base, sample(40, thumbs_up=0.0)), shadow=True)
    assert d.kind == "pass" and d.reason.startswith("shadow phase passed")
    assert d.numbers["phase"] == "shadow" and d.numbers["weight"] == 0.0
    assert "thumbs_up" not in d.numbers["gates"] and "score" not in d.numbers["gates"]
    d = decide(SPEC, -1, ev(base, sample(40, errors=40)), shadow=True)
    assert d.kind == "fail" and d.reason.startswith("shadow phase: gate failed: error_rate")
    d = decide(SPEC, -1, ev(base, sample(40, latency=0.3)), shadow=True)
    assert d.kind == "fail" and "latency_p95" in d.reason
    d = decide(SPEC, -1, ev(base, sample(5)), shadow=True)
    assert d.kind == "wait" and "5 candidate requests, need 20" in d.reason


def sample_rows(n: int) -> list[dict[str, object]]:
    return [{"status": "ok", "latency_s": 0.1, "ttft_s": 0.05, "completion_tokens": 8} for _ in range(n)]


@pytest.mark.parametrize(
    ("text", "name", "limit"),
    [
        ("error_rate<=+1pt", "error_rate", 1.0),
        ("ttft_p95<=1.25x", "ttft_p95", 1.25),
        ("thumbs_up>=-3pt", "thumbs_up", -3.0),
        ("score>=0.9x", "score", 0.9),
        ("latency_p95=off", "latency_p95", None),
        (" length_p50 <= 3 ", "length_p50", 3.0),
    ],
)
def test_gate_parsing(text: str, name: str, limit: float | None) -> None:
    g = parse_gate(text)
    assert (g.name, g.limit) == (name, limit)
    assert parse_gate(g.text) == g


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("errors<=1pt", "unknown gate 'errors'"),
        ("error_rate>=1pt", "error_rate<=VALUEpt"),
        ("ttft_p95<=1.2pt", "ttft_p95<=VALUEx"),
        ("ttft_p95<=-1x", "positive"),
        ("error_rate", "expected NAME<=VALUE"),
    ],
)
def test_bad_gates_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(GateError, match=message):
        parse_gate(text)


def test_defaults_and_overrides() -> None:
    gates = {g.name: g for g in gate_set({"ttft_p95": "<=1.25x", "score": "=off"})}
    assert gates["ttft_p95"].limit == 1.25 and gates["score"].limit is None
    assert gates["error_rate"].limit == 1.0
