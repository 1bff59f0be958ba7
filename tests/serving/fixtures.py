"""Fixtures: one real `platform serve` (vLLM, tiny model, float32) per test session, with trained adapters."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registry.store import Registry
from testkit.adapters import random_adapter as random_adapter  # re-exported for the serving tests
from testkit.adapters import train_tiny as train_tiny
from testkit.servers import free_port, platform_cmd, stop_process, wait_ready
from testkit.servers import wait_until as wait_until  # re-exported for the serving tests
from tests.serving.otlp import Receiver

START_TIMEOUT_S = 240


def peft_manager(reg: Registry, tiny_base: Any, max_loaded: int = 4) -> Any:
    """An AdapterManager on the PEFT engine (not started) and the tiny base, as a server holds one."""
    from registry.basemodels import EMBEDDED_TINY
    from serving.adapters import AdapterManager
    from serving.engine.peft import PeftEngine
    from serving.settings import ServeSettings

    engine = PeftEngine(ServeSettings(base_model="tiny"), tiny_base)
    return AdapterManager(reg, engine, tiny_base, EMBEDDED_TINY, 64, max_loaded)


def serve_cmd(registry: Path | str, port: int, *extra: str) -> list[str]:
    """`platform serve` on the tiny model, the registry and a port, plus `extra` flags."""
    return [
        platform_cmd(),
        "serve",
        "--base-model",
        "tiny",
        "--registry",
        str(registry),
        "--port",
        str(port),
        *extra,
    ]


def metric(server_url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """The sum of every /metrics sample whose line starts with `name` (a name, or a name and labels)."""
    import httpx

    total = 0.0
    for line in httpx.get(server_url + "/metrics", headers=headers).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Server:
    url: str
    registry: Path | str
    proc: subprocess.Popen[bytes]
    log: Path
    plugin_marker: Path

    def client(self, **kw: object):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120, **kw)  # type: ignore[arg-type]


def is_ready(url: str) -> bool:
    """Whether the server at `url` answers /ready with 200 (False while it starts or is gone)."""
    import httpx

    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_base) -> tuple[Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("serving")
    registry = root / "registry"
    refs = {
        "support": train_tiny(registry, root / "runs", "support", "sample:support-tickets", seed=1),
        "contact": train_tiny(registry, root / "runs", "contact", "sample:contact-json", seed=2),
    }
    Registry(registry).set_alias(refs["support"], "prod")
    return registry, refs


def running_server(
    registry: Path | str, root: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A real `platform serve` on the tiny model with `flags`, ready (`/ready`), stopped afterwards;
    it records in `root/plugin-pids` which LoRA op each of its processes loaded."""
    port, log, marker = free_port(), root / "server.log", root / "plugin-pids"
    env = {**(os.environ if env is None else env), "LORA_PLATFORM_PLUGIN_MARKER": str(marker)}
    env["VLLM_LOGGING_LEVEL"] = "WARNING"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            serve_cmd(registry, port, *flags), stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, START_TIMEOUT_S, "/ready")
    except RuntimeError as exc:
        stop_process(proc)
        raise RuntimeError(f"platform serve: {exc}:\n{log.read_text()[-4000:]}") from None
    yield Server(url, registry, proc, log, marker)
    stop_process(proc)


@pytest.fixture(scope="session")
def otlp() -> Iterator[Receiver]:
    """The OTLP/HTTP receiver the session server sends its traces to."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def server(
    adapters: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory, otlp: Receiver
) -> Iterator[Server]:
    """The session server, tracing to `otlp` (spans leave in batches every 100 ms)."""
    registry, _ = adapters
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)  # the server picks it (test_server.py)
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    yield from running_server(
        registry,
        tmp_path_factory.mktemp("server"),
        "--dtype",
        "float32",
        "--max-loras",
        "2",
        "--max-cpu-loras",
        "4",
        "--max-lora-rank",
        "16",
        "--kv-cache-gb",
        "1",
        "--pin",
        "support:prod",
        env=env,
    )


TOOLS_TEMPLATE = Path(__file__).parents[2] / "serving" / "chat_templates" / "chatml-tools.jinja"
"""The shipped ChatML template with Hermes-style tool calls (the tiny model's own renders no tools)."""


@pytest.fixture(scope="session")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of the tiny base (an empty registry: no adapters to train first) that honours
    `tools`: vLLM's `hermes` tool parser and a chat template that renders tools (the session server
    has neither: there tools are a 400)."""
    root = tmp_path_factory.mktemp("tool-server")
    yield from running_server(
        root / "registry",
        root,
        "--dtype",
        "float32",
        "--max-lora-rank",
        "16",
        "--kv-cache-gb",
        "1",
        "--tool-parser",
        "hermes",
        "--chat-template",
        str(TOOLS_TEMPLATE),
    )


@dataclass
class CatalogServer:
    """A running server and the registry it follows: a folder (SQLite), or PostgreSQL + artifacts."""

    server: Server
    location: str
    """The folder, or the catalog URL with its password (what `--registry` takes)."""
    artifacts: str | None = None

    def registry(self) -> Registry:
        return Registry(self.location, self.artifacts)

    def cli_args(self) -> list[str]:
        """`--registry` (and `--artifacts`) for a CLI call on this registry."""
        extra = ["--artifacts", self.artifacts] if self.artifacts else []
        return ["--registry", self.location, *extra]


def copy_versions(src: Registry, dst: Registry, refs: list[str]) -> None:
    """Push these versions of `src` into an empty `dst` (the session registry also holds versions
    that tests break on purpose, so it is not copied whole)."""
    for ref in refs:
        v = src.get(ref)
        assert dst.push(v.name, v.path, v.lineage).ref == ref


@pytest.fixture(scope="session")
def pg_server(adapters, postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogServer]:  # type: ignore[no-untyped-def]
    """The session's adapters copied into PostgreSQL + an artifact folder, served by a real
    `platform serve` that follows that catalog (the PEFT engine: what differs between the backends
    is the catalog, which sits above the engine; a second vLLM engine doubles start-up on 2 cores)."""
    root = tmp_path_factory.mktemp("pg-server")
    url, artifacts = postgres.new_database(), str(root / "artifacts")
    pg = Registry(url, artifacts)
    copy_versions(Registry(adapters[0]), pg, ["support@1", "contact@1"])
    pg.set_alias("support@1", "prod")
    flags = ["--artifacts", artifacts, "--engine", "peft", "--dtype", "float32", "--max-lora-rank", "16"]
    flags += ["--max-cpu-loras", "4", "--pin", "support:prod"]
    for server in running_server(url, root, *flags):
        yield CatalogServer(server, url, artifacts)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalog_server(request: pytest.FixtureRequest, adapters) -> CatalogServer:  # type: ignore[no-untyped-def]
    """The session server on each catalog backend: the folder one (vLLM) and the PostgreSQL one."""
    if request.param == "sqlite":
        return CatalogServer(request.getfixturevalue("server"), str(adapters[0]))
    pg: CatalogServer = request.getfixturevalue("pg_server")
    return pg
