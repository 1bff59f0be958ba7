"""Canary rollouts on running servers: promoted, rolled back, failed in pre-flight, paused; and
two replicas on one PostgreSQL catalog where exactly one controller acts.

The servers are real `platform serve` processes with `--engine peft` on the tiny model (the
controller sits above the engine; vLLM start-up would double the time on 2 cores). Requests go
through a steady loop that posts thumbs feedback for each answer, as users would.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli.main import cli
from registry import rollouts as ro
from registry.basemodels import resolve_base_model
from registry.store import Registry
from testkit.postgres import Postgres
from testkit.servers import server_process
from tests.registry.reviewing import finish_review
from tests.serving.fixtures import free_port, random_adapter, serve_cmd, wait_until

pytestmark = pytest.mark.slow
INTERVAL_S = 1.0


@dataclass
class Setup:
    location: str
    artifacts: Path | None
    urls: list[str]
    adapters: dict[int, Path]

    def registry(self) -> Registry:
        return Registry(self.location, self.artifacts)

    def push(self, name: str, rank: int) -> str:
        """Push the adapter of `rank` (0: a rank-8 LoRA with NaN weights, which loads but errors
        on every sampled request) as a new version of `name`."""
        base = resolve_base_model("tiny")
        lineage = {"base_model": base.id, "base_model_sha256": base.weights_sha256}
        return self.registry().push(name, self.adapters[rank], lineage).ref

    def versions(self, name: str, candidate_rank: int = 8) -> tuple[str, str]:
        """(baseline, candidate) of a new adapter `name`, baseline aliased prod."""
        baseline = self.push(name, 4)
        self.registry().set_alias(baseline, "prod")
        return baseline, self.push(name, candidate_rank)

    def rollout(self, *args: str) -> str:
        cmd = ["rollout", *args, "--registry", self.location]
        if self.artifacts is not None:
            cmd += ["--artifacts", str(self.artifacts)]
        out = CliRunner().invoke(cli, cmd)
        assert out.exit_code == 0, out.output
        return out.output


def _adapters(root: Path) -> dict[int, Path]:
    out = {r: random_adapter(root / f"r{r}", r, ["q_proj", "v_proj"]) for r in (4, 8, 32)}
    out[0] = shutil.copytree(out[8], root / "nan")
    weights = out[0] / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.fill_(float("nan")) if "lora_B" in k else v for k, v in tensors.items()}, weights)
    return out


def _servers(setup: Setup, root: Path, n: int, *extra: str) -> Iterator[Setup]:
    with ExitStack() as stack:
        for i in range(n):
            port, log = free_port(), root / f"server{i}.log"
            cmd = serve_cmd(setup.location, port, "--engine", "peft", "--dtype", "float32", *extra)  # type: ignore[arg-type]
            if setup.artifacts is not None:
                cmd += ["--artifacts", str(setup.artifacts)]
            stack.enter_context(server_process(cmd, f"http://127.0.0.1:{port}", log, ready_path="/ready"))
            setup.urls.append(f"http://127.0.0.1:{port}")
        yield setup


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One server on a registry folder (SQLite), refusing LoRA ranks above 16."""
    root = tmp_path_factory.mktemp("rollout")
    setup = Setup(str(root / "registry"), None, [], _adapters(root))
    setup.push("warmup", 4)
    yield from _servers(setup, root, 1, "--max-lora-rank", "16")


class Traffic:
    """A steady request loop on `model` over the servers; each answer gets thumbs feedback
    chosen by `thumbs(variant)`. Records every status and which version answered when.

    Greedy by default: sampled, the tiny random model ends its answer at the first token about once
    in 1800 requests on either adapter, and one empty answer among a 5% step's few candidate
    requests holds empty_rate (it cannot be shown within +1pt) until --max-wait pauses the rollout."""

    def __init__(
        self,
        urls: list[str],
        model: str,
        thumbs: Callable[[str], str] | None = None,
        temperature: float = 0.0,
    ) -> None:
        self.urls, self.model, self.thumbs = list(urls), model, thumbs
        self.temperature = temperature
        self.statuses: Counter[int | str] = Counter()
        self.feedback_refused = 0
        self.served: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            for n in range(100_000):  # bounded
                if self._stop.is_set():
                    return
                urls = self.urls
                url = urls[(n + worker) % len(urls)]
                body = {
                    "model": self.model,
                    "prompt": f"hello {n}",
                    "max_tokens": 2,
                    "temperature": self.temperature,
                    "user": f"w{worker}-{n}",
                }
                try:
                    r = http.post(f"{url}/v1/completions", json=body)
                except httpx.TransportError as exc:
                    self.statuses[type(exc).__name__] += 1
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code != 200:
                    continue
                answer = r.json()
                self.served.append((time.time(), answer["model"]))
                thumbs = self.thumbs  # None once the route has ended (answers are no longer routed)
                if thumbs is not None:
                    self._feedback(http, url, answer["id"], thumbs(answer["model"]))

    def _feedback(self, http: httpx.Client, url: str, cid: str, thumbs: str) -> None:
        # the request's evidence row is written off the hot path: feedback on it may need a moment
        try:
            wait_until(
                lambda: (
                    http.post(f"{url}/v1/feedback", json={"id": cid, "thumbs": thumbs}).status_code == 200
                ),
                10,
            )
        except (AssertionError, httpx.HTTPError):  # the route ended, or this server was killed
            self.feedback_refused += 1  # an answer from just before the route ended

    def __enter__(self) -> Traffic:
        # every server knows the rollout's route before traffic starts (until a server's next
        # catalog poll, `model=NAME` still means the latest version: the candidate)
        wait_until(lambda: all(_route_listed(u, self.model) for u in self.urls), 10)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _route_listed(url: str, name: str) -> bool:
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return any(m["id"] == name and "variants" in m for m in models)


def state(setup: Setup, name: str) -> str:
    return setup.registry().rollouts().get(name).state


def timeline(setup: Setup, name: str) -> list[ro.Event]:
    events = setup.registry().rollouts().events(name)
    for e in events:  # the decision timeline, for the README and for a failing test's output
        step = "shadow" if e.numbers.get("phase") == "shadow" and e.step < 0 else f"step {e.step + 1}"
        print(f"{e.ts - events[0].ts:6.1f}s {step:6} {e.weight:5.1f}% {e.decision:16} {e.reason or ''}")
    return events


def test_a_good_candidate_walks_the_steps_and_is_promoted(one: Setup) -> None:
    baseline, candidate = one.versions("good")
    steps = ["--steps", "5,50,100", "--interval", "1s", "--min-requests", "5", "--min-feedback", "5"]
    steps += ["--max-wait", "40s"]
    one.rollout("start", "good", "--candidate", candidate, *steps)
    with Traffic(one.urls, "good", thumbs=lambda _: "up") as traffic:
        wait_until(lambda: state(one, "good") == "running", 60)
        for model, version in ((baseline, baseline), ("good:prod", baseline), (candidate, candidate)):
            for user in range(4):  # a version or an alias is never split by the rollout's route
                body = {"model": model, "prompt": "hi", "max_tokens": 1, "user": f"pinned{user}"}
                r = httpx.post(f"{one.urls[0]}/v1/completions", json=body, timeout=60)
                assert r.json()["model"] == version, (model, r.text)
        wait_until(lambda: state(one, "good") not in ("preflight", "running"), 60)
        traffic.thumbs = None
        events = timeline(one, "good")
        assert state(one, "good") == "promoted", events[-1].reason
        promoted = time.time()
        wait_until(lambda: sum(1 for t, _ in traffic.served if t > promoted + 0.5) >= 5, 10)
    assert [e.weight for e in events if e.decision in ("preflight-ok", "advance", "promote")] == [
        5,
        50,
        100,
        100,
    ]
    reg = one.registry()
    assert reg.get("good:prod").ref == candidate
    assert "rollout:promoted" in reg.get(candidate, verify_files=False).tags
    assert set(traffic.statuses) == {200}, traffic.statuses  # zero failed requests through every step
    assert {m for _, m in traffic.served} == {baseline, candidate}
    metrics = httpx.get(one.urls[0] + "/metrics").text
    assert 'lora_rollout_candidate_weight_ratio{route="good"} 0.0' in metrics  # route ended
    assert 'lora_rollout_decision{decision="promote",route="good"} 1.0' in metrics
    out = one.rollout("status", "good")
    assert "promoted" in out and "advance" in out


def test_worse_feedback_is_rolled_back_at_the_first_step(one: Setup, tmp_path: Path) -> None:
    baseline, candidate = one.versions("bad")
    # 8 requests and 5 feedback events per variant: feedback trails the answers by at most one
    # request per client thread, so step 1 is judged with its feedback
    args = ["--steps", "5,50,100", "--interval", "1s", "--min-requests", "8", "--min-feedback", "5"]
    one.rollout("start", "bad", "--candidate", candidate, *args, "--max-wait", "40s")
    with Traffic(one.urls, "bad", thumbs=lambda m: "down" if m == candidate else "up") as traffic:
        wait_until(lambda: state(one, "bad") not in ("preflight", "running"), 60)
        traffic.thumbs = None
        ended = time.time()
        wait_until(lambda: sum(1 for t, _ in traffic.served if t > ended + 0.5) >= 10, 20)
    events = timeline(one, "bad")
    rollback = events[-1]
    assert state(one, "bad") == "rolled_back" and rollback.decision == "rollback"
    assert rollback.step == 0 and "thumbs_up" in (rollback.reason or "") and "p=" in (rollback.reason or "")
    assert rollback.numbers["candidate"]["thumbs_up_rate"] == 0.0
    reg = one.registry()
    assert reg.get("bad:prod").ref == baseline  # the alias never moved
    assert "rollout:rolled-back" in reg.get(candidate, verify_files=False).tags
    assert all(m == baseline for t, m in traffic.served if t > ended + 0.5)  # weight 0 at once
    assert set(traffic.statuses) == {200}, traffic.statuses
    # time from the failing evidence being available (the 8th candidate request with the 5th
    # candidate feedback) to weight 0
    reqs, fb = reg.evidence().load("bad")
    step_start = next(e.ts for e in events if e.decision == "preflight-ok")
    cand = sorted((r["ts"], r["id"]) for r in reqs if r["variant"] == candidate and r["ts"] >= step_start)
    cand_ids = {i for _, i in cand}
    available = max(cand[7][0], sorted(f["ts"] for f in fb if f["completion_id"] in cand_ids)[4])
    reaction = rollback.ts - available
    print(f"failing evidence available -> weight 0: {reaction:.2f}s (interval {INTERVAL_S:g}s)")
    assert reaction <= INTERVAL_S + 1.0
    png = tmp_path / "bad.png"
    one.rollout("status", "bad", "--png", str(png))
    assert png.stat().st_size > 10_000


def test_a_candidate_that_cannot_load_fails_preflight_before_any_traffic(one: Setup) -> None:
    baseline, candidate = one.versions("noload", candidate_rank=32)  # rank 32 > --max-lora-rank 16
    one.rollout("start", "noload", "--candidate", candidate, "--interval", "1s", "--min-requests", "5")
    with Traffic(one.urls, "noload") as traffic:  # from now on, `noload` is the route (baseline only)
        wait_until(lambda: state(one, "noload") == "failed", 20)
        failed = len(traffic.served)
        wait_until(lambda: len(traffic.served) >= failed + 5, 20)
    r = one.registry().rollouts().get("noload")
    assert "rank 32 exceeds" in (r.reason or "") and r.reason.startswith("pre-flight")  # type: ignore[union-attr]
    assert {m for _, m in traffic.served} == {baseline}  # no request ever reached the candidate
    reqs, _ = one.registry().evidence().load("noload")
    assert reqs and all(x["variant"] == baseline for x in reqs)
    assert one.registry().get("noload:prod").ref == baseline
    assert set(traffic.statuses) == {200}


def _phase_gauge(url: str, name: str, phase: str) -> bool:
    return f'lora_rollout_phase{{phase="{phase}",route="{name}"}} 1.0' in httpx.get(url + "/metrics").text


def test_shadow_first_a_good_candidate_passes_the_shadow_then_walks_the_steps(one: Setup) -> None:
    baseline, candidate = one.versions("shadowok")
    args = ["--steps", "50,100", "--interval", "1s", "--min-requests", "5", "--min-feedback", "5"]
    one.rollout("start", "shadowok", "--candidate", candidate, "--shadow-first", *args, "--max-wait", "40s")
    wait_until(lambda: _phase_gauge(one.urls[0], "shadowok", "shadow"), 10)  # no traffic yet: it waits
    assert "shadow phase: it answers copies of 100% of requests" in one.rollout("status", "shadowok")
    with Traffic(one.urls, "shadowok", thumbs=lambda _: "up") as traffic:
        wait_until(lambda: state(one, "shadowok") not in ("preflight", "shadow", "running"), 60)
        traffic.thumbs = None
    events = timeline(one, "shadowok")
    assert state(one, "shadowok") == "promoted", events[-1].reason
    moves = [(e.decision, e.weight) for e in events if e.decision not in ("start", "wait")]
    assert moves == [("preflight-ok", 0), ("shadow-ok", 50), ("advance", 100), ("promote", 100)]
    shadow_ok = next(e for e in events if e.decision == "shadow-ok")
    assert shadow_ok.numbers["phase"] == "shadow" and "thumbs_up" not in shadow_ok.numbers["gates"]
    assert shadow_ok.reason.startswith("shadow phase passed: error_rate")  # type: ignore[union-attr]
    reqs, _ = one.registry().evidence().load("shadowok")
    copies = [x for x in reqs if x["shadow"]]
    assert copies and {x["variant"] for x in copies} == {candidate}
    assert all(x["ts"] <= shadow_ok.ts + 1 for x in copies)  # copies end with the shadow phase
    assert all(x["ts"] >= shadow_ok.ts for x in reqs if x["variant"] == candidate and not x["shadow"])
    assert all(t >= shadow_ok.ts for t, m in traffic.served if m == candidate)
    assert {m for t, m in traffic.served if t < shadow_ok.ts} == {baseline}
    assert one.registry().get("shadowok:prod").ref == candidate
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert _phase_gauge(one.urls[0], "shadowok", "ended")


def test_shadow_first_an_erroring_candidate_is_rolled_back_before_any_user_sees_it(one: Setup) -> None:
    baseline = one.push("shadowbad", 4)
    one.registry().set_alias(baseline, "prod")
    candidate = one.push("shadowbad", 0)  # loads, but every sampled answer fails (NaN weights)
    args = ["--interval", "1s", "--min-requests", "5", "--max-wait", "40s", "--shadow-first"]
    one.rollout("start", "shadowbad", "--candidate", candidate, *args)
    with Traffic(one.urls, "shadowbad", temperature=1.0) as traffic:  # NaN logits fail when sampled
        wait_until(lambda: state(one, "shadowbad") not in ("preflight", "shadow"), 60)
        ended = len(traffic.served)
        wait_until(lambda: len(traffic.served) >= ended + 5, 20)
    events = timeline(one, "shadowbad")
    assert [e.decision for e in events if e.decision != "wait"] == ["start", "preflight-ok", "rollback"]
    rollback = events[-1]
    assert state(one, "shadowbad") == "rolled_back" and rollback.step == -1 and rollback.weight == 0
    assert (rollback.reason or "").startswith("shadow phase: gate failed: error_rate +100.00pt")
    assert rollback.numbers["candidate"]["errors"] == rollback.numbers["candidate"]["requests"] >= 5
    reqs, _ = one.registry().evidence().load("shadowbad")
    assert {x["variant"] for x in reqs if not x["shadow"]} == {baseline}  # no user got a candidate answer
    assert {(x["variant"], x["status"]) for x in reqs if x["shadow"]} == {(candidate, "error")}
    assert {m for _, m in traffic.served} == {baseline} and set(traffic.statuses) == {200}
    reg = one.registry()
    assert reg.get("shadowbad:prod").ref == baseline  # the alias never moved
    assert "rollout:rolled-back" in reg.get(candidate, verify_files=False).tags
    out = CliRunner().invoke(cli, ["rollout", "status", "shadowbad", "--json", "--registry", one.location])
    status = json.loads(out.output)
    assert status["state"] == "rolled_back" and status["phase"] == "ended" and status["spec"]["shadow_first"]
    assert "shadow" in one.rollout("status", "shadowbad")  # the timeline's step column


def test_another_base_model_is_refused_by_rollout_start(one: Setup) -> None:
    one.versions("otherbase")
    other = Registry(one.location).get("otherbase@2", verify_files=False)
    lineage = {**other.lineage, "base_model": "someone/else", "base_model_sha256": "0" * 64}
    cand = one.registry().push("otherbase", other.path, lineage).ref
    out = CliRunner().invoke(
        cli, ["rollout", "start", "otherbase", "--candidate", cand, "--registry", one.location]
    )
    assert out.exit_code == 1 and "another base model" in out.output and "Traceback" not in out.output
    bad_gate = ["rollout", "start", "otherbase", "--candidate", cand, "--gate", "errors<=1pt"]
    out = CliRunner().invoke(cli, [*bad_gate, "--registry", one.location])
    assert out.exit_code == 2 and "unknown gate 'errors'" in out.output


def test_too_little_traffic_waits_then_pauses_with_a_reason(one: Setup) -> None:
    _, candidate = one.versions("quiet")
    args = ["--interval", "1s", "--min-requests", "5", "--max-wait", "3s"]
    one.rollout("start", "quiet", "--candidate", candidate, *args)
    wait_until(lambda: state(one, "quiet") == "paused", 20)
    events = timeline(one, "quiet")
    assert [e.decision for e in events][:2] == ["start", "preflight-ok"]
    assert "wait" in [e.decision for e in events] and events[-1].decision == "pause"
    assert "need 5 each" in (events[-1].reason or "")
    assert events[-1].weight == 5  # paused where it stood
    assert "running" in one.rollout("resume", "quiet")
    one.rollout("abort", "quiet")
    assert state(one, "quiet") == "aborted"
    assert "quiet" in one.rollout("list")


@pytest.fixture(scope="module")
def pair(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Two replicas on one PostgreSQL catalog and one artifact folder."""
    root = tmp_path_factory.mktemp("rollout-pg")
    setup = Setup(postgres.new_database(), root / "artifacts", [], _adapters(root))
    setup.push("warmup", 4)
    yield from _servers(setup, root, 2)


def test_improve_reaches_the_rollout_under_a_request_loop_without_a_failed_request(
    one: Setup, tmp_path: Path
) -> None:
    """`platform improve`: review choices since the serving version -> DPO from it -> offline gate ->
    a shadow-first rollout that the running server picks up, while users keep asking."""
    from registry import reviews as rv
    from registry.rubric import load_rubric

    tiny = ["--base-model", "tiny", "--max-steps", "1", "lora.r=8", "lora.alpha=16", "data.max_seq_len=64"]
    tiny += ["data.overlong=truncate"]  # the sample rows are longer: cut the prompt, keep the answer
    tiny += ["eval.max_examples=2", "eval.max_new_tokens=2", "eval.compare_base=false"]
    args = ["train", "--name", "loop", "--data", "sample:support-tickets", "--output-dir", str(tmp_path)]
    trained = CliRunner().invoke(cli, [*args, "--registry", one.location, *tiny])
    assert trained.exit_code == 0, trained.output
    reg = one.registry()
    reg.set_alias("loop@1", "prod")
    spec = rv.ReviewSpec("loop@1", "loop@1", load_rubric().to_dict(), reviewers_per_item=1, source="t")
    rows = [
        rv.NewItem([{"role": "user", "content": f"ticket {i}"}], f"Sorry, {i} ships.", f"no {i}", True)
        for i in range(4)
    ]
    reg.reviews().create("loop-review", spec, rows)
    finish_review(reg, "loop-review")

    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def users() -> None:
        with httpx.Client(timeout=60) as http:
            for n in range(100_000):  # bounded
                if stop.is_set():
                    return
                body = {"model": "loop:prod", "prompt": f"hello {n}", "max_tokens": 2, "temperature": 0}
                try:
                    statuses[http.post(f"{one.urls[0]}/v1/completions", json=body).status_code] += 1
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1

    loop = threading.Thread(target=users, daemon=True)
    loop.start()
    try:
        sets = [
            "--set",
            "training.batch_size=2",
            "--set",
            "data.max_seq_len=64",
            "--set",
            "data.overlong=truncate",
            "--set",
            "training.max_steps=1",
        ]
        sets += [
            "--set",
            "eval.max_examples=2",
            "--set",
            "eval.max_new_tokens=2",
            "--set",
            "eval.compare_base=false",
        ]
        sets += ["--set", "data.val_fraction=0", "--set", "data.test_fraction=0.25"]
        cmd = [
            "improve",
            "loop",
            "--min-rows",
            "2",
            "--interval",
            "1s",
            "--review",
            "2",
            "--output-dir",
            str(tmp_path),
        ]
        improve = CliRunner().invoke(cli, [*cmd, *sets, "--registry", one.location])
        assert improve.exit_code == 0, improve.output
        assert "rollout loop: loop@1 -> loop@2 started" in improve.output
        wait_until(lambda: state(one, "loop") in ("shadow", "running"), 60)  # the server loaded it
    finally:
        stop.set()
        loop.join(timeout=60)
    assert set(statuses) == {200} and statuses[200] > 0, statuses
    candidate = one.registry().get("loop@2")
    assert {"improve:gates-passed", "improve:review-created", "improve:rollout-started"} <= set(
        candidate.tags
    )
    assert one.registry().reviews().get("improve-loop-v2").items == 2  # the review set, beside the rollout
    assert candidate.lineage["objective"]["reference"] == "loop@1"
    one.rollout("abort", "loop")


def test_two_replicas_one_controller_acts_and_a_killed_holder_is_replaced(pair: Setup) -> None:
    _, candidate = pair.versions("duo")
    args = ["--steps", "20,40,60,80,100", "--interval", "1s", "--min-requests", "3", "--max-wait", "40s"]
    # after the kill one server carries all the traffic, so later requests are slower than earlier
    # ones; the last step compares the candidate's with the baseline's since the rollout began:
    # latency gates would judge the load change, not the version (this test is about the controller)
    args += ["--gate", "latency_p95=off", "--gate", "ttft_p95=off"]
    pair.rollout("start", "duo", "--candidate", candidate, *args)
    with Traffic(pair.urls, "duo", thumbs=lambda _: "up") as traffic:
        wait_until(lambda: pair.registry().rollouts().get("duo").step >= 1, 40)
        first = pair.registry().rollouts().lease_holder(time.time())
        assert first is not None
        pid = int(first.split(":")[1])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        port = argv[argv.index("--port") + 1]
        os.kill(pid, signal.SIGKILL)  # the leaseholder dies mid-rollout
        killed = time.time()
        traffic.urls[:] = [u for u in pair.urls if not u.endswith(f":{port}")]
        assert len(traffic.urls) == 1  # users now reach the other replica only
        try:
            wait_until(lambda: state(pair, "duo") == "promoted", 50)
        except AssertionError:
            timeline(pair, "duo")
            print("traffic:", dict(traffic.statuses), "feedback refused:", traffic.feedback_refused)
            raise
        traffic.thumbs = None
    events = timeline(pair, "duo")
    acts = [e for e in events if e.decision in ("preflight-ok", "advance", "promote")]
    assert [e.weight for e in acts] == [20, 40, 60, 80, 100, 100]  # no step twice, none skipped
    holders = [e.holder for e in events if e.holder]
    assert first in holders and len(set(holders)) == 2  # the other replica took over
    assert all(e.holder == first for e in events if e.holder and e.ts < killed)
    assert all(e.holder != first for e in events if e.ts > killed)
    for a, b in itertools.pairwise(events):  # one controller: one decision per interval
        assert b.ts - a.ts >= INTERVAL_S * 0.9 or a.decision == "start", (a, b)
