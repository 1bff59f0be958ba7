"""Issue #31 against a real server (vLLM on the tiny model, PostgreSQL catalog, a small --max-queue):
shadow copies take request slots and end with their client; a version whose tensors disagree with
its config, or that vLLM refuses, is a generic 422 and the engine keeps serving; a catalog that
hangs holds no running stream."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from registry import store as store_module
from registry.adapter import validate_adapter
from registry.routes import start_route
from registry.store import Registry
from serving.experiments.stats import percentile
from testkit.adapters import random_adapter
from testkit.postgres import Postgres
from tests.serving.fixtures import CatalogServer, metric, running_server, wait_until

MAX_QUEUE = 4
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small(postgres: Postgres, tiny_base, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogServer]:  # type: ignore[no-untyped-def]
    """vLLM on the tiny model, a PostgreSQL catalog with two versions, 4 request slots."""
    root = tmp_path_factory.mktemp("async-safety")
    url, artifacts = postgres.new_database(), str(root / "artifacts")
    reg = Registry(url, artifacts)
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    for name, rank in (("support", 8), ("contact", 4)):
        reg.push(name, random_adapter(root / name, rank, ["q_proj", "v_proj"]), lineage)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_NUM_OF_RESERVED_CPU"}
    env["LORA_PLATFORM_MAX_QUEUE"] = str(MAX_QUEUE)
    flags = ["--artifacts", artifacts, "--dtype", "float32", "--kv-cache-gb", "1", "--max-lora-rank", "16"]
    flags += ["--max-loras", "2", "--max-cpu-loras", "4", "--pin", "support@1"]
    for server in running_server(url, root, *flags, env=env):
        yield CatalogServer(server, url, artifacts)


def post(server: CatalogServer, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.server.url}/v1/chat/completions", json=body, timeout=120)


def idle(server: CatalogServer) -> bool:
    url = server.server.url
    return metric(url, "lora_engine_requests") == 0 and metric(url, "lora_requests_in_flight") == 0


# -- item 5: shadow copies ---------------------------------------------------------------------


class Streams:
    """Streaming clients held open after their first event, then all closed at once."""

    def __init__(self, server: CatalogServer, body: dict[str, object]) -> None:
        self.url, self.body = f"{server.server.url}/v1/chat/completions", body
        self.go = threading.Event()
        self.statuses: list[int] = []
        self.opened = threading.Semaphore(0)

    def client(self, _: int) -> None:
        with httpx.stream("POST", self.url, json={**self.body, "stream": True}, timeout=120) as r:
            self.statuses.append(r.status_code)
            lines = r.iter_lines()  # kept: a dropped iterator closes the connection
            if r.status_code == 200:
                next(lines)  # the role chunk: admitted and running
            self.opened.release()
            self.go.wait(120)  # then every client goes away at once

    @contextmanager
    def open(self, n: int) -> Iterator[Streams]:
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(self.client, i) for i in range(n)]
            for _ in range(n):
                assert self.opened.acquire(timeout=120)
            try:
                yield self
            finally:
                self.go.set()
                for f in futures:
                    f.result()


def test_shadow_copies_take_request_slots_and_end_with_their_client(small: CatalogServer) -> None:
    reg = small.registry()
    start_route(reg, "shadowed", [("support@1", 100)], shadow="contact@1", shadow_share=1.0)
    wait_until(
        lambda: post(small, {"model": "shadowed", "messages": HI, "max_tokens": 2}).status_code == 200, 30
    )
    wait_until(lambda: idle(small), 60)  # the warm-up's copy is done
    long = {"model": "shadowed", "messages": HI, "max_tokens": 400, "n": 4, "temperature": 1.0}
    with Streams(small, long).open(MAX_QUEUE // 2) as two:
        assert two.statuses == [200, 200]
        # each request and its copy hold a slot: the queue is full, more load is refused
        wait_until(lambda: metric(small.server.url, "lora_requests_in_flight") == MAX_QUEUE, 10)
        extra = post(small, {"model": "support@1", "messages": HI, "max_tokens": 2})
        assert extra.status_code == 429 and extra.headers["retry-after"] == "1"
    took = wait_until(lambda: idle(small), 10)  # clients gone: requests and copies aborted
    with Streams(small, long).open(16) as burst:
        admitted = burst.statuses.count(200)
        assert 1 <= admitted <= MAX_QUEUE and burst.statuses.count(429) == 16 - admitted
    took_burst = wait_until(lambda: idle(small), 10)
    print(
        f"\nshadowed streams gone: engine idle after {took:.2f}s; burst of 16: {admitted} admitted, idle after {took_burst:.2f}s"
    )


# -- items 7 and 12: versions that must not reach the engine ---------------------------------------


def push_unchecked(
    reg: Registry, name: str, folder: Path, lineage: dict[str, object], like: Path, monkeypatch
) -> str:  # type: ignore[no-untyped-def]
    """Push `folder` as a release without today's tensor checks would have (its card from `like`)."""
    with monkeypatch.context() as m:
        m.setattr(store_module, "validate_adapter", lambda _folder: validate_adapter(like))
        return reg.push(name, folder, lineage).ref


def crafted_rank(folder: Path, good: Path) -> Path:
    """`good` with its config left at r=8 and every factor stored at rank 128."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    tensors = load_file(str(good / "adapter_model.safetensors"))
    big = {
        k: torch.randn(128, t.shape[1]) if ".lora_A." in k else torch.randn(t.shape[0], 128)
        for k, t in tensors.items()
    }
    save_file(big, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    return folder


def test_a_version_whose_tensors_disagree_with_its_config_is_a_422_and_the_engine_serves_on(
    small: CatalogServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = small.registry()
    good = reg.get("support@1")
    ref = push_unchecked(
        reg, "crafted", crafted_rank(tmp_path / "crafted", good.path), good.lineage, good.path, monkeypatch
    )
    r = post(small, {"model": ref, "messages": HI, "max_tokens": 2})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "adapter_not_loadable" and err["param"] == "model"
    assert err["message"] == f"{ref} is not a valid LoRA adapter (the server log says why)"
    assert "disagree" in small.server.log.read_text()  # the detail is in the log
    assert post(small, {"model": "support@1", "messages": HI, "max_tokens": 2}).status_code == 200
    assert httpx.get(f"{small.server.url}/health").status_code == 200  # the engine is alive


def test_an_adapter_vllm_refuses_is_a_422_with_generic_text(small: CatalogServer, tmp_path: Path) -> None:
    reg = small.registry()
    good = reg.get("contact@1")
    folder = tmp_path / "biased"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((good.path / "adapter_model.safetensors").read_bytes())
    config = json.loads((good.path / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))  # vLLM: not supported
    ref = reg.push("biased", folder, good.lineage).ref
    r = post(small, {"model": ref, "messages": HI, "max_tokens": 2})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message == f"{ref}: the inference engine refused this adapter (the server log says why)"
    assert "bias" in small.server.log.read_text()
    assert post(small, {"model": "contact@1", "messages": HI, "max_tokens": 2}).status_code == 200


# -- item 8: a hung catalog holds no running stream ------------------------------------------------


@contextmanager
def hung_catalog(pg: Postgres) -> Iterator[None]:
    """PostgreSQL stopped, and its port answering nothing: every new connection waits for the
    client's connect timeout (a database behind a dead network path, or hung), not a quick refusal."""
    pg.stop()
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", pg.port))
    hole.listen(1)  # never accepted
    try:
        yield
    finally:
        hole.close()
        pg.start()


class TokenGaps:
    """Streams on one version back to back in two threads, recording the time between tokens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.gaps: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(2)]

    def run(self, seed: int) -> None:
        body = {"model": "support@1", "messages": HI, "max_tokens": 400, "temperature": 1.0, "stream": True}
        while not self.stop.is_set():
            seed += 2
            last = None
            with httpx.stream("POST", self.url, json={**body, "seed": seed}, timeout=120) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {") or '"content":""' in line:
                        continue
                    now = time.monotonic()
                    if last is not None:
                        self.gaps.append((now, now - last))
                    last = now

    def between(self, start: float, end: float) -> list[float]:
        return [gap for t, gap in self.gaps if start <= t - gap and t <= end]


def test_a_hung_catalog_does_not_slow_running_streams(small: CatalogServer, postgres: Postgres) -> None:
    url = small.server.url
    wait_until(lambda: idle(small), 30)
    streams = TokenGaps(f"{url}/v1/chat/completions")
    statuses: list[int] = []
    for t in streams.threads:
        t.start()
    try:
        wait_until(lambda: len(streams.gaps) >= 20, 60)
        steady = (time.monotonic(), time.monotonic() + 12)
        wait_until(lambda: time.monotonic() > steady[1], 15)
        with hung_catalog(postgres):
            down = time.monotonic()
            n = 0
            while time.monotonic() - down < 13:  # a client asks for names never resolved here
                n += 1
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    json={"model": f"ghost-{n}", "messages": HI, "max_tokens": 2},
                    timeout=30,
                )
                statuses.append(r.status_code)
            outage = (down + 1, time.monotonic())
    finally:
        streams.stop.set()
        for t in streams.threads:
            t.join(120)
    before, during = streams.between(*steady), streams.between(*outage)
    p99_before, p99_during = percentile(before, 99) or 0.0, percentile(during, 99) or 0.0
    print(
        f"\ninter-token gap p99: steady {p99_before * 1000:.1f} ms ({len(before)} gaps), hung catalog "
        f"{p99_during * 1000:.1f} ms ({len(during)} gaps, {len(statuses)} unknown-name requests: "
        f"{sorted(set(statuses))}), ratio {p99_during / p99_before:.2f}"
    )
    # 1.5x steady, or half a second over it where other work on this shared machine makes the
    # steady phase itself that noisy: the stall guarded against is a connect timeout of 5 s
    assert p99_during <= max(1.5 * p99_before, p99_before + 0.5)
    assert len(before) >= 100 and len(during) >= 100, (len(before), len(during))
    assert set(statuses) == {503}
    wait_until(lambda: httpx.get(f"{url}/health").json()["catalog"] == "ok", 30)
