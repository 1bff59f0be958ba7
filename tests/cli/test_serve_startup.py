"""`platform serve` startup mistakes: one line naming the flag, file or field, exit 2 (bad argument)
or 1, never a traceback and never 3 (kept for a dead engine). A real subprocess each; every mistake
but the last is found before the engine starts."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from registry.basemodels import resolve_base_model
from registry.store import Registry
from testkit.servers import platform_cmd
from tests.registry.test_store import LINEAGE, make_adapter
from tests.serving.fixtures import free_port, random_adapter

ROOT = Path(__file__).parents[2]


def run_serve(*args: str, timeout: float = 120) -> tuple[int, str, float]:
    """Exit status, stdout + stderr and seconds of `platform serve --engine peft ARGS`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PLATFORM_")}
    if "LORA_PLATFORM_HOME" in os.environ:  # where the embedded models are built
        env["LORA_PLATFORM_HOME"] = os.environ["LORA_PLATFORM_HOME"]
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    start = time.monotonic()
    out = subprocess.run(
        [platform_cmd(), "serve", "--engine", "peft", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.returncode, out.stdout + out.stderr, time.monotonic() - start


def error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with `other@1` (trained on other weights) and `tiny-r4@1` (rank 4, on the tiny model)."""
    root = tmp_path_factory.mktemp("startup")
    reg = Registry(root / "registry")
    adapter = make_adapter(root / "adapter")
    reg.push("other", adapter, LINEAGE)
    tiny = resolve_base_model("tiny")
    fits = random_adapter(root / "tiny-r4", 4, ["q_proj", "v_proj"])  # fits the tiny base's layers
    reg.push("tiny-r4", fits, {"base_model": tiny.id, "base_model_sha256": tiny.weights_sha256})
    reg.close()
    return root / "registry"


MISTAKES = {
    # name: (files to write, args, exit status, what the one line must say)
    "invalid YAML": ({"bad.yaml": "port: [8000\n"}, ["--config", "bad.yaml"], 2, ["bad.yaml", "line 2"]),
    "YAML list": ({"list.yaml": "- port: 8000\n"}, ["--config", "list.yaml"], 2, ["list.yaml", "list"]),
    "unknown key": ({"k.yaml": "prot: 8000\n"}, ["--config", "k.yaml"], 2, ["k.yaml", "prot"]),
    "wrong type": ({"t.yaml": "max_loras: abc\n"}, ["--config", "t.yaml"], 2, ["t.yaml", "max_loras"]),
    "missing config": ({}, ["--config", "none.yaml"], 2, ["none.yaml", "does not exist"]),
    "bad flag value": ({}, ["--max-loras", "0"], 2, ["--max-loras"]),
    "unknown embedded model": ({}, ["--base-model", "embedded/nope"], 2, ["--base-model", "embedded/nope"]),
    "missing model folder": ({}, ["--base-model", "./no/such"], 2, ["--base-model", "no such folder"]),
    "not a registry": ({"notreg/x": ""}, ["--registry", "notreg"], 2, ["--registry", "not a registry"]),
    "unreachable database": (
        {},
        ["--registry", "postgresql://lp:s3cret@127.0.0.1:1/catalog"],
        1,
        ["--registry", "unavailable", "lp:***@127.0.0.1:1"],
    ),
    "unknown pin": ({}, ["--pin", "nope@3"], 2, ["--pin nope@3", "no adapter named 'nope'"]),
    "pin of another base model": ({}, ["--pin", "other@1"], 2, ["--pin other@1", "trained on"]),
    "ingress without replicas": ({}, ["--ingress", "ray"], 2, ["--ingress", "--replicas N"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_one_line_before_the_engine_starts(
    mistake: str, registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, args, status, says = MISTAKES[mistake]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.chdir(tmp_path)
    defaults = ["--base-model", "tiny", "--registry", str(registry), "--port", str(free_port())]
    code, output, _ = run_serve(*defaults, *args)
    line = error_line(output)
    assert code == status, output
    for text in says:
        assert text in line, output
    assert "s3cret" not in output


def test_a_taken_port_is_refused_before_the_engine_starts(registry: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output, _ = run_serve("--base-model", "tiny", "--registry", str(registry), "--port", str(port))
    assert code == 2, output
    assert "--port" in error_line(output)


def test_a_pin_that_fails_to_load_on_the_engine_is_one_line_and_exit_1(registry: Path) -> None:
    args = ["--base-model", "tiny", "--registry", str(registry), "--port", str(free_port())]
    code, output, _ = run_serve(*args, "--pin", "tiny-r4@1", "--max-lora-rank", "1")
    assert code == 1, output
    line = error_line(output)
    assert "did not start" in line and "tiny-r4@1" in line and "rank 4" in line, output
