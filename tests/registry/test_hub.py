"""Hub round trip through the real `huggingface_hub` client against a local fake of the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import IntegrityError, RegistryError
from registry.hub import HubError, parse_hub_ref, pull, push
from registry.store import Registry
from tests.registry.fake_hub import TOKEN, fake_hub
from tests.registry.test_store import LINEAGE, make_adapter
from tests.serving.fixtures import free_port


@pytest.fixture
def lineage(tiny_base) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """A lineage naming the tiny base model as it is here: a pull checks the adapter against it."""
    return {**LINEAGE, "base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}


def tiny_adapter(folder: Path) -> Path:
    """An adapter that fits the tiny base model's layers (hidden size 256)."""
    return make_adapter(folder, size=256)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    with fake_hub(free_port()) as (url, repos):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the fake Hub is local; read once at import, so both
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield url, repos


def test_push_then_pull_round_trip_keeps_bytes_and_lineage(
    hub, lineage, registry_root: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, repos = hub
    reg = Registry(registry_root)
    v = reg.push("support", tiny_adapter(tmp_path / "a"), lineage)
    reg.set_alias(v.ref, "prod")
    out = CliRunner().invoke(
        cli, ["registry", "push", "support@1", "--to", "hf://acme/support", "--registry", str(registry_root)]
    )
    assert out.exit_code == 0, out.output
    repo = repos["acme/support"]
    assert {"v1", "prod"} <= set(repo.tags)
    uploaded = repo.commits[repo.tags["v1"]]
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "manifest.json",
        "lineage.json",
        "README.md",
    } <= set(uploaded)
    assert "library_name: peft" in uploaded["README.md"].decode()

    other = Registry(tmp_path / "other")
    got = pull(other, "hf://acme/support@v1", "imported")
    assert got.ref == "imported@1"
    assert (got.path / "adapter_model.safetensors").read_bytes() == (
        v.path / "adapter_model.safetensors"
    ).read_bytes()
    assert got.base_sha256 == lineage["base_model_sha256"]
    assert got.lineage["pulled_from"] == {
        "hub": "hf://acme/support@v1",
        "name": "support",
        "version": 1,
        "parent": None,
    }
    assert other.verify_all() == {"imported@1": None}


def test_tampered_download_is_refused_and_nothing_is_stored(
    hub, lineage, registry_root: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, repos = hub
    reg = Registry(registry_root)
    reg.push("support", tiny_adapter(tmp_path / "a"), lineage)
    push(reg, "support@1", "hf://acme/t")
    files = repos["acme/t"].commits[repos["acme/t"].tags["v1"]]
    files["adapter_config.json"] = b'{"peft_type": "LORA", "r": 64}'
    other = Registry(tmp_path / "other")
    with pytest.raises(
        IntegrityError, match=r"hf://acme/t@v1: adapter_config\.json does not match its sha256"
    ):
        pull(other, "hf://acme/t@v1", "x")
    assert other.list_versions() == []


def test_hub_errors_are_clear(
    hub, lineage, registry_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(registry_root)
    reg.push("support", tiny_adapter(tmp_path / "a"), lineage)
    with pytest.raises(HubError, match=r"pull hf://acme/missing"):
        pull(reg, "hf://acme/missing", "x")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(HubError, match="push support@1 to hf://acme/r"):
        push(reg, "support@1", "hf://acme/r")
    for bad in ("hf://nope", "s3://a/b", "hf://a/b@"):
        with pytest.raises(RegistryError, match="malformed Hub reference"):
            parse_hub_ref(bad)
    out = CliRunner().invoke(
        cli, ["registry", "pull", "hf://acme/missing", "--as", "x", "--registry", str(registry_root)]
    )
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert (
        json.loads(
            CliRunner().invoke(cli, ["registry", "list", "--json", "--registry", str(registry_root)]).output
        )[0]["ref"]
        == "support@1"
    )
