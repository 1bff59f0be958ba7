"""Shared fixtures: the tiny model, a trained tiny adapter, and throwaway registries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from testkit.postgres import Postgres

pytest_plugins = ["tests.serving.fixtures"]  # the session's one real server, shared by serving and load tests

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


KEPT_SETTINGS = {"LORA_PLATFORM_HOME", "LORA_PLATFORM_SOAK_REPORT"}
"""Caller settings tests keep: where the embedded models are built, and where the soak test writes its report."""


@pytest.fixture(scope="session", autouse=True)
def own_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests pass whatever the caller exported: no LORA_PLATFORM_* settings, offline Hub, own HF_HOME.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so its constant is set too; the Hub tests
    (tests/registry/test_hub.py) turn it off for themselves. Servers started by tests inherit this.
    """
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("LORA_PLATFORM_") and k not in KEPT_SETTINGS]:
            mp.delenv(key)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_base():  # type: ignore[no-untyped-def]
    from registry.basemodels import resolve_base_model

    return resolve_base_model("tiny")


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL server per test session (pgserver wheel, 127.0.0.1, password auth)."""
    from testkit.postgres import Postgres

    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh registry on each backend: a folder, or an empty PostgreSQL database whose files go
    to an artifact folder (LORA_PLATFORM_ARTIFACTS, inherited by CLI calls and subprocesses)."""
    if request.param == "sqlite":
        return str(tmp_path / "registry")
    pg: Postgres = request.getfixturevalue("postgres")
    monkeypatch.setenv("LORA_PLATFORM_ARTIFACTS", str(tmp_path / "artifacts"))
    return pg.new_database()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray per test session, for Ray Serve (tests/serving) and Ray Train (tests/trainer);
    its GCS address, for drivers in other processes (`--ray-address`).

    4 logical CPUs, so a Ray Train run with 2 workers finds room beside Serve replicas another test
    module left up; workers inherit this environment (PYTHONPATH: the checkout under test)."""
    ray = pytest.importorskip("ray")

    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    # workers' logs stay in Ray's session folder: printed here they land in CliRunner's output
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_base):  # type: ignore[no-untyped-def]
    """A LoRA trained for a few steps on the tiny model and pushed to a session registry."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    root = tmp_path_factory.mktemp("tiny-run")
    config = load_config(
        None,
        [
            "base_model=embedded/tiny-llama",
            "name=tiny",
            f"output_dir={root / 'runs'}",
            "training.max_steps=6",
            "training.batch_size=8",
            "training.lr=0.01",
            "eval.max_examples=8",
            "eval.max_new_tokens=12",
            "data.max_seq_len=96",
            "data.overlong=truncate",  # rows of ~100-150 tokens: cut the prompt, keep the answer
            "eval.baseline=few_shot:1",  # a prompted base beside the bare one (no shot fits 96 tokens)
            "eval.general_max_examples=5",
        ],
    )
    result = run(config, console=Console(quiet=True))
    registry = root / "registry"
    result.registry_ref = publish(result, str(registry))
    return result, registry
