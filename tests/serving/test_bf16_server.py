"""The default serving path: `platform serve --dtype bfloat16`, whose LoRA layers run on the compiled
op (lora_bf16.c) where the CPU has AVX512-BF16. The session server runs float32 (lora_f32.c)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry.basemodels import EMBEDDED_TINY
from serving.engine.cpu import lora_kernel
from tests.serving.fixtures import Server, running_server
from tests.serving.test_server import PROMPTS, chat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_server(adapters, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PLATFORM_")}
    if "LORA_PLATFORM_HOME" in os.environ:  # where the compiled op was built
        env["LORA_PLATFORM_HOME"] = os.environ["LORA_PLATFORM_HOME"]
    yield from running_server(
        registry,
        tmp_path_factory.mktemp("bf16-server"),
        "--dtype",
        "bfloat16",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "16",
        "--kv-cache-gb",
        "1",
        env=env,
    )


def test_bf16_mixed_batches_give_each_row_its_own_adapter(bf16_server: Server) -> None:
    """Base rows batched with two adapters' rows equal base-only outputs; each adapter row equals
    its output when it runs alone (greedy; concurrent requests so that they share steps)."""
    lines = [line.split() for line in bf16_server.plugin_marker.read_text().splitlines()]
    engine = {kernel for pid, kernel, *_ in lines if int(pid) != bf16_server.proc.pid}
    if lora_kernel.cpu_supported():
        assert engine and engine <= {"amx", "avx512"}, f"the compiled op must serve bf16: {engine}"
    client = bf16_server.client()
    jobs = [(m, p) for m in (EMBEDDED_TINY, "support@1", "contact@1") for p in PROMPTS]
    alone = {job: chat(client, *job).choices[0].message.content for job in jobs}
    assert any(alone[("support@1", p)] != alone[(EMBEDDED_TINY, p)] for p in PROMPTS)
    assert any(alone[("contact@1", p)] != alone[("support@1", p)] for p in PROMPTS)
    with ThreadPoolExecutor(max_workers=len(jobs) * 2) as pool:
        together = list(pool.map(lambda job: (job, chat(client, *job).choices[0].message.content), jobs * 2))
    for job, text in together:
        assert text == alone[job], job
