"""Stock vLLM (`python -m vllm.entrypoints.openai.api_server`) serves registry versions through the
resolver plugin (serving/engine/resolver.py): `name@N` answers, as `platform serve` does; an alias,
an unknown name, a tampered version and a version for another base model are refused with a 4xx,
and the engine keeps serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from registry.store import Registry
from serving.engine.resolver import Refused, RegistryResolver
from testkit.servers import server_process
from tests.serving.fixtures import Server, free_port, random_adapter, wait_until

ROOT = Path(__file__).parents[2]
PLUGIN = "lora_platform_resolver"
PROMPT = "Customer: my order is late.\nAgent:"


def declared_entry_point() -> str:
    """The `vllm.general_plugins` entry point pyproject.toml declares for the resolver."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["entry-points"]["vllm.general_plugins"][PLUGIN])


def plugin_path(tmp: Path) -> str:
    """A folder whose dist-info declares the resolver entry point, when the installed project does
    not yet (an editable install made before the entry point was added): vLLM then loads the plugin
    exactly as it does from an installed project, through importlib.metadata."""
    if any(ep.name == PLUGIN for ep in entry_points(group="vllm.general_plugins")):
        return ""
    info = tmp / "lora_platform_resolver_entry-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lora-platform-resolver-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{PLUGIN} = {declared_entry_point()}\n")
    return str(tmp)


@dataclass
class Stock:
    url: str
    registry: Path
    log: Path

    def complete(self, model: str) -> httpx.Response:
        body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        return httpx.post(self.url + "/v1/completions", json=body, timeout=120)


def _push_tampered(reg: Registry, source: str) -> str:
    v = reg.get(source)
    pushed = reg.push("tampered", v.path, dict(v.lineage))
    weights = pushed.path / "adapter_model.safetensors"
    weights.chmod(0o644)  # published versions are read-only
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of one weight: only the sha256 can tell
    weights.write_bytes(bytes(data))
    return pushed.ref


def _push_other_base(reg: Registry, source: str) -> str:
    v = reg.get(source)
    lineage = {**v.lineage, "base_model": "someone/else", "base_model_sha256": "0" * 64}
    return reg.push("otherbase", v.path, lineage).ref


@pytest.fixture(scope="module")
def stock(
    adapters: tuple[Path, dict[str, str]], tiny_base, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stock]:
    root = tmp_path_factory.mktemp("stock")
    registry = root / "registry"
    shutil.copytree(adapters[0], registry)  # the session registry stays as other tests expect it
    reg = Registry(registry)
    refs = {"tampered": _push_tampered(reg, adapters[1]["support"])}
    refs["otherbase"] = _push_other_base(reg, adapters[1]["support"])
    reg.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    extra = plugin_path(root / "plugin")
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), extra) if p),
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
        VLLM_PLUGINS=f"lora_platform_cpu_lora,{PLUGIN}",  # vLLM's allow-list: both plugins, side by side
        VLLM_CPU_KVCACHE_SPACE="1",
        LORA_PLATFORM_REGISTRY=str(registry),
    )
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_base.path),
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "2",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--seed",
        "0",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url, root / "vllm.log", env=env, timeout_s=300, ready_path="/health"):
        yield Stock(url, registry, root / "vllm.log")


def _push_random(reg: Registry, tiny_base, folder: Path, name: str) -> str:  # type: ignore[no-untyped-def]
    random_adapter(folder, 4, ["q_proj", "v_proj"])
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    return reg.push(name, folder, lineage).ref


def test_the_resolver_hands_out_only_verified_versions_that_fit_the_base(
    registry_location: str, tiny_base, tmp_path: Path
) -> None:
    """On either backend, without vLLM: what the plugin would hand to vLLM, and what it refuses."""
    reg = Registry(registry_location)
    ref = _push_random(reg, tiny_base, tmp_path / "good", "good")
    reg.set_alias(ref, "prod")
    bad = _push_random(reg, tiny_base, tmp_path / "bad", "bad")
    config = reg.get(bad).path / "adapter_config.json"  # rank 4 weights, config says r=2: shapes do not fit
    config.chmod(0o644)
    config.write_text(config.read_text().replace('"r": 4', '"r": 2'))
    base = str(tiny_base.path)
    resolver = RegistryResolver(registry_location)
    path = resolver.check(base, ref)
    assert path is not None and (path / "adapter_model.safetensors").is_file()
    assert resolver.check(base, "Not A Ref!") is None  # not ours: left to other resolvers
    for name, said in [
        ("good:prod", "not an immutable version"),
        ("good", "not an immutable version"),
        ("good@2", "good@2"),
        ("bad@1", "integrity"),  # the config no longer matches its manifest
    ]:
        with pytest.raises(Refused, match=said):
            resolver.check(base, name)
        assert asyncio.run(resolver.resolve_lora(base, name)) is None  # never a raise into vLLM
    reg.close()


def test_shapes_that_do_not_fit_the_base_are_refused(tiny_base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.registry.test_store import make_adapter

    reg = Registry(tmp_path / "registry")
    folder = make_adapter(
        tmp_path / "narrow", size=64
    )  # consistent in itself; the base's layers are 256 wide
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    ref = reg.push("misfit", folder, lineage).ref
    with pytest.raises(Refused, match="does not fit the running base model"):
        RegistryResolver(str(tmp_path / "registry")).check(str(tiny_base.path), ref)


@pytest.mark.slow
def test_a_version_answers_from_the_registry_as_platform_serve_does(
    stock: Stock, server: Server, adapters: tuple[Path, dict[str, str]]
) -> None:
    ref = adapters[1]["support"]
    resp = stock.complete(ref)
    assert resp.status_code == 200, resp.text
    ours = server.client().completions.create(model=ref, prompt=PROMPT, max_tokens=8, temperature=0)
    assert resp.json()["choices"][0]["text"] == ours.choices[0].text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("support:prod", "not an immutable version"),
        ("support", "not an immutable version"),
        ("nosuch@1", "nosuch"),
        ("tampered@1", "integrity"),
        ("otherbase@1", "was trained on someone/else"),
        ("Not A Ref!", "not a registry reference"),
    ],
)
def test_anything_else_is_refused_with_a_4xx_and_the_engine_keeps_serving(
    stock: Stock, adapters: tuple[Path, dict[str, str]], model: str, said: str
) -> None:
    resp = stock.complete(model)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["message"]
    wait_until(lambda: said in stock.log.read_text(), 10)  # one log line says why
    assert stock.complete(adapters[1]["contact"]).status_code == 200
