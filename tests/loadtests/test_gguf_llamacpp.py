"""The exported GGUF adapter in llama.cpp's own server, where the benchmark's llama-server build is
present (`python -m loadtests.llamacpp build`); skipped without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.test_gguf_export import export
from tests.trainer.test_gguf_export import registry as registry  # the trained registry fixture


def test_llama_server_loads_the_exported_adapter_and_answers(registry: Path, tmp_path: Path) -> None:
    """Where the benchmark's llama-server build is present (`python loadtests/llamacpp.py build`)."""
    import subprocess

    import httpx

    from loadtests import llamacpp
    from testkit.servers import free_port, stop_process, wait_ready

    binary = llamacpp.server_binary()
    if not binary.exists():
        pytest.skip(f"no llama-server build at {binary}")
    export(registry, "plain@1", tmp_path / "o", "--format", "ollama")
    port = free_port()
    cmd = llamacpp.server_command(
        binary, tmp_path / "o" / "base-f16.gguf", [tmp_path / "o" / "adapter.gguf"], port, 1
    )
    with (tmp_path / "llama.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, 120, "/health")
        body = {"prompt": "hi", "n_predict": 4, "lora": [{"id": 0, "scale": 1.0}]}
        r = httpx.post(url + "/completion", json=body, timeout=60)
        assert r.status_code == 200 and "content" in r.json()
    finally:
        stop_process(proc)
