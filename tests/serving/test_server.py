"""A real `platform serve` (vLLM engine, tiny model) driven by the official openai client.

The tests that depend on the catalog (listing, resolution, live pushes and alias moves, refusals)
run on both backends through `catalog_server`: the session's folder registry and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from registry.basemodels import EMBEDDED_TINY
from registry.store import Registry
from serving.engine.cpu import lora_kernel
from tests.serving.fixtures import CatalogServer, Server, metric, random_adapter, wait_until

PROMPTS = [
    "Turn this customer message into a ticket line.\n\nHi, my router has not arrived. Order 55555.",
    "Hello from Oslo! My name is Vera Lind and please send me your pricing.",
    "the app crashes whenever I open the camera page. Ref: 12345.",
]


def chat(client: Any, model: str, prompt: str, max_tokens: int = 16, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(adapters: tuple[Path, dict[str, str]], tiny_base):  # type: ignore[no-untyped-def]
    """The PEFT engine on the same adapters: greedy float32 outputs to compare against."""
    from serving.adapters import AdapterManager
    from serving.engine.peft import PeftEngine
    from serving.settings import ServeSettings

    registry, _refs = adapters
    engine = PeftEngine(ServeSettings(base_model="tiny", dtype="float32"), tiny_base)
    manager = AdapterManager(Registry(registry), engine, tiny_base, EMBEDDED_TINY, 64, 16)
    asyncio.run(engine.start())

    def run(model: str, prompt: str, max_tokens: int = 16) -> str:
        from serving.engine.base import GenParams

        async def go() -> str:
            ids = engine.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            async with manager.lease(model) as target:
                out = [
                    d
                    async for d in engine.generate(
                        "ref", ids, GenParams(max_tokens=max_tokens, temperature=0), target.adapter
                    )
                ]
            return "".join(d.text for batch in out for d in batch)

        return asyncio.run(go())

    return run


def test_models_lists_the_base_and_every_compatible_adapter(catalog_server: CatalogServer) -> None:
    server = catalog_server.server
    models = {m.id: m for m in server.client().models.list().data}
    assert {EMBEDDED_TINY, "support@1", "support", "support:prod", "contact@1", "contact"} <= set(models)
    assert models["support@1"].parent == EMBEDDED_TINY  # type: ignore[attr-defined]


def test_each_adapter_matches_the_peft_reference_token_for_token(server: Server, reference) -> None:  # type: ignore[no-untyped-def]
    client = server.client()
    outputs = {}
    for model in (EMBEDDED_TINY, "support@1", "contact@1"):
        for prompt in PROMPTS:
            got = chat(client, model, prompt).choices[0].message.content
            # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence
            # (the tiny model's byte-level BPE emits them); transformers prints U+FFFD for it.
            assert got.rstrip("\ufffd") == reference(model, prompt).rstrip("\ufffd"), (model, prompt)
            outputs[(model, prompt)] = got
    # the adapters really change the model's answers
    assert any(outputs[("support@1", p)] != outputs[(EMBEDDED_TINY, p)] for p in PROMPTS)
    assert any(outputs[("contact@1", p)] != outputs[("support@1", p)] for p in PROMPTS)


def test_response_names_the_version_that_served(server: Server) -> None:
    client = server.client()
    reg = Registry(server.registry)  # other tests push versions and move the alias: ask the catalog
    prod, latest = reg.get("support:prod", False).ref, reg.get("support", False).ref
    raw = client.chat.completions.with_raw_response.create(
        model="support:prod", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert raw.parse().model == prod
    assert raw.headers["x-adapter-version"] == prod
    assert chat(client, "support", "hi", 2).model == latest
    assert chat(client, "base", "hi", 2).model == EMBEDDED_TINY


def test_streaming_equals_non_streaming_and_reports_usage(server: Server) -> None:
    client = server.client()
    full = chat(client, "support@1", PROMPTS[0], 12)
    chunks = list(
        chat(client, "support@1", PROMPTS[0], 12, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_text_completions_stream_and_logprobs(server: Server) -> None:
    client = server.client()
    plain = client.completions.create(
        model="contact@1", prompt="Order 12345", max_tokens=6, temperature=0, logprobs=2
    )
    assert plain.object == "text_completion" and plain.usage.completion_tokens == 6
    lp = plain.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == 6 and all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) >= 2 for t in lp.top_logprobs)
    streamed = client.completions.create(
        model="contact@1", prompt="Order 12345", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text


def test_sampling_parameters_n_seed_stop(server: Server) -> None:
    client = server.client()
    a = client.chat.completions.create(
        model="support@1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=1.0,
        seed=7,
        n=3,
    )
    b = client.chat.completions.create(
        model="support@1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=1.0,
        seed=7,
        n=3,
    )
    assert len(a.choices) == 3 and [c.message.content for c in a.choices] == [
        c.message.content for c in b.choices
    ]
    first = chat(client, "support@1", PROMPTS[0], 12).choices[0].message.content
    stop = first.strip().split()[-1] if first.strip() else "x"
    stopped = chat(client, "support@1", PROMPTS[0], 12, stop=[stop]).choices[0]
    assert stop not in stopped.message.content


def test_mixed_batches_give_each_row_its_own_adapter(server: Server) -> None:
    """Base rows batched with LoRA rows must equal base-only outputs (vLLM CPU -1 index bug)."""
    client = server.client()
    jobs = [(m, p) for m in (EMBEDDED_TINY, "support@1", "contact@1") for p in PROMPTS]
    alone = {job: chat(client, *job).choices[0].message.content for job in jobs}
    with ThreadPoolExecutor(max_workers=len(jobs) * 2) as pool:
        together = list(pool.map(lambda job: (job, chat(client, *job).choices[0].message.content), jobs * 2))
    for job, text in together:
        assert text == alone[job], job


def test_the_cpu_lora_plugin_runs_in_the_engine_process(server: Server) -> None:
    lines = [line.split() for line in server.plugin_marker.read_text().splitlines()]
    engine = [kernel for pid, kernel, *_ in lines if int(pid) != server.proc.pid]
    assert engine, "the plugin must be registered inside vLLM's engine-core process"
    if lora_kernel.cpu_supported():  # the compiled bf16 op is loaded there too
        assert set(engine) <= {"amx", "avx512"}, engine
    # the server runs float32: its LoRA layers on this CPU's float32 variant (AVX512F, AVX2/FMA)
    f32 = {f32 for pid, _, f32 in lines if int(pid) != server.proc.pid}
    assert f32 == {lora_kernel.f32_variant(want="auto") or "torch"}, f32


def test_on_two_cpus_the_model_computes_on_both(server: Server) -> None:
    """vLLM keeps a core off the model for its engine core; on 2 CPUs that left it one thread."""
    cpus = os.sched_getaffinity(server.proc.pid)
    if len(cpus) > 2:
        pytest.skip("vLLM's own reservation applies on machines with more than 2 CPUs")
    children = psutil.Process(server.proc.pid).children(recursive=True)
    workers = [p for p in children if "Worker" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in children]
    used = set().union(*(os.sched_getaffinity(t.id) for t in workers[0].threads()))
    assert used == cpus


def test_a_new_version_and_an_alias_move_are_served_without_restart(catalog_server: CatalogServer) -> None:
    server = catalog_server.server
    client = server.client()
    reg = catalog_server.registry()
    src = reg.get("support@1")
    failures: list[BaseException] = []
    served: list[tuple[float, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            sent = time.monotonic()  # when the request was sent
            try:
                served.append((sent, chat(client, "support", "hi", 2).model))
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(served) >= 6, 30)  # traffic on the old version
    new = reg.push("support", src.path, src.lineage)
    pushed_at = time.monotonic()  # the version exists once the push has committed
    # until several requests sent more than 1 s after the push have answered
    wait_until(lambda: sum(t > pushed_at + 1.0 for t, _ in served) >= 3, 30)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    late = [m for t, m in served if t > pushed_at + 1.0]
    first_new = min(t for t, m in served if m == new.ref)
    print(f"\nfirst request served by the new version was sent {first_new - pushed_at:.2f}s after the push")
    assert late and all(m == new.ref for m in late)  # every request sent 1 s after the push gets it
    assert all(m == src.ref for t, m in served if t < pushed_at - 0.5)  # and none before
    reg.set_alias(new.ref, "prod")
    wait_until(lambda: chat(client, "support:prod", "hi", 2).model == new.ref, 2)  # polled every 0.2 s


def _error(
    server: Server, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, Any]]:
    r = httpx.post(server.url + path, json=body, timeout=60)
    return r.status_code, r.json()["error"]


def test_errors_are_openai_shaped_with_the_right_status(catalog_server: CatalogServer) -> None:
    server = catalog_server.server
    client = server.client()
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="ghost@3", messages=msgs)  # type: ignore[arg-type]
    assert nf.value.body["param"] == "model" and "ghost" in nf.value.body["message"]  # type: ignore[index]
    for bad in ("../etc/passwd", "/tmp/adapter", "Support", "support@0", "support:../../x"):
        status, err = _error(server, {"model": bad, "messages": msgs})
        assert (status, err["param"]) == (404, "model"), bad
    status, err = _error(server, {"model": "support@1", "messages": msgs, "temperature": 5})
    assert status == 400 and err["param"] == "temperature" and err["type"] == "invalid_request_error"
    status, err = _error(server, {"model": "support@1", "messages": []})
    assert status == 400 and err["param"] == "messages"
    status, err = _error(server, {"model": "support@1", "messages": msgs, "max_tokens": 100000})
    assert status == 400 and err["param"] == "max_tokens"
    status, err = _error(
        server, {"model": "support@1", "messages": [{"role": "user", "content": "word " * 600}]}
    )
    assert status == 400 and err["code"] == "context_length_exceeded"
    status, err = _error(server, {"model": "support@1", "messages": msgs, "n": 99})
    assert status == 400 and err["param"] == "n"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()
    # the server still serves after all of that
    assert chat(client, "support@1", "hi", 2).choices[0].message.content is not None


def test_bad_adapters_get_422_and_everything_else_keeps_serving(
    catalog_server: CatalogServer, tmp_path: Path
) -> None:
    server = catalog_server.server
    reg = catalog_server.registry()
    lineage = reg.get("support@1").lineage
    big = reg.push("bigrank", random_adapter(tmp_path / "r32", 32, ["q_proj", "v_proj"]), lineage)
    other = reg.push(
        "otherbase",
        random_adapter(tmp_path / "r8", 8, ["q_proj"]),
        {**lineage, "base_model_sha256": "0" * 64},
    )
    hi = [{"role": "user", "content": "hi"}]
    wait_until(lambda: _error(server, {"model": big.ref, "messages": hi})[0] != 404, 5)  # seen
    status, err = _error(server, {"model": big.ref, "messages": hi})
    assert status == 422 and "max_lora_rank" in err["message"]
    status, err = _error(server, {"model": other.ref, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 422 and "another base model" in err["message"]
    assert other.ref not in {m.id for m in server.client().models.list().data}
    assert chat(server.client(), "contact@1", "hi", 2).model == "contact@1"


def test_a_tampered_version_is_refused_before_it_reaches_the_engine(catalog_server: CatalogServer) -> None:
    server = catalog_server.server
    reg = catalog_server.registry()
    src = reg.get("contact@1")
    v = reg.push("tampered", src.path, src.lineage)
    weights = v.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    status, err = _error(server, {"model": v.ref, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 422 and "integrity" in err["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_health_ready_and_metrics(server: Server) -> None:
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["pinned"] == ["support@1"]
    chat(server.client(), "contact@1", "hi", 2)
    text = httpx.get(server.url + "/metrics").text
    assert 'lora_requests_total{model="contact@1",route="",status="ok",variant=""}' in text
    assert "lora_ttft_seconds_bucket" in text and "lora_loaded_adapters" in text
    httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (
        'lora_errors_total{model="",type="invalid_request_error:404"}'
        in httpx.get(server.url + "/metrics").text
    )


def test_unused_adapters_are_evicted_lru_and_reloaded_on_demand(
    server: Server, adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    refs = [reg.push(f"many{i}", src.path, src.lineage).ref for i in range(5)]
    client = server.client()
    wait_until(lambda: set(refs) <= {m.id for m in client.models.list().data}, 5)
    first, loaded = [], []
    for r in refs:
        first.append(chat(client, r, PROMPTS[1]).choices[0].message.content)
        loaded.append(metric(server.url, "lora_loaded_adapters"))
    # the server started with --max-cpu-loras 4: five more versions (on top of the pinned one and
    # those earlier tests loaded) only fit by evicting the least recently used
    assert max(loaded) <= 4, f"adapters loaded after each new one: {loaded}"
    again = [chat(client, r, PROMPTS[1]).choices[0].message.content for r in refs]
    assert first == again == [first[0]] * 5  # same weights under five names, evicted and reloaded
    # first requests for three new versions at once: each load holds its slot from the moment it
    # made room, so concurrent loads do not all fit themselves into one freed slot
    burst = [reg.push(f"burst{i}", src.path, src.lineage).ref for i in range(3)]
    wait_until(lambda: set(burst) <= {m.id for m in client.models.list().data}, 5)
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda r: chat(client, r, PROMPTS[1]).choices[0].message.content, burst))
    assert answers == [first[0]] * 3
    assert metric(server.url, "lora_loaded_adapters") <= 4
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_offline_comparison_through_the_running_server(server: Server) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    out = CliRunner().invoke(
        cli,
        [
            "eval",
            "base",
            "support@1",
            "--data",
            "sample:support-tickets",
            "--max-examples",
            "3",
            "--max-new-tokens",
            "8",
            "--server",
            server.url,
        ],
    )
    assert out.exit_code == 0, out.output
    assert "support@1 vs base on rougeL: win" in out.output
