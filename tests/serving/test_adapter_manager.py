"""AdapterManager's resolution cache: bounded, one entry per version however a client spells it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from registry.store import Registry
from serving import adapters as adapters_module
from serving.adapters import AdapterManager
from serving.engine.peft import PeftEngine
from serving.errors import ModelNotFoundError
from serving.settings import ServeSettings
from tests.registry.test_store import make_adapter


@pytest.fixture
def manager(tmp_path: Path, tiny_base) -> AdapterManager:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "registry")
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    for name in ("support", "contact"):
        reg.push(name, make_adapter(tmp_path / name, size=256), lineage)
    engine = PeftEngine(ServeSettings(base_model="tiny"), tiny_base)  # never started: resolution only
    return AdapterManager(reg, engine, tiny_base, "tiny", 64, 4)


def test_spellings_of_one_name_share_one_cache_entry(manager: AdapterManager) -> None:
    spellings = [f"{' ' * i}support@{'0' * (i % 3)}1{chr(9) * (i % 4)}" for i in range(2000)]

    async def go() -> set[tuple[str, int] | None]:
        return {await manager.resolve(s) for s in spellings}

    assert asyncio.run(go()) == {("support", 1)}
    assert len(manager._resolved) == 1


def test_the_cache_is_bounded(manager: AdapterManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters_module, "MAX_RESOLVED", 2)

    async def go() -> None:
        for ref in ("support", "support@1", "contact", "contact@1", "support"):
            await manager.resolve(ref)
        with pytest.raises(ModelNotFoundError):
            await manager.resolve("  ghost  ")

    asyncio.run(go())
    assert list(manager._resolved) == ["contact@1", "support"]
