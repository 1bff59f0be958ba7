"""A database registry whose files live behind an fsspec URL (here `file://`, the same code path as
`s3://`): pushes upload, readers fetch into a sha256-keyed cache and verify, gc finds orphans."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import IntegrityError
from registry.store import Registry
from testkit.postgres import Postgres
from tests.registry.test_store import LINEAGE, make_adapter


def test_an_fsspec_store_uploads_fetches_verifies_and_collects(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_PLATFORM_HOME", str(tmp_path / "home"))  # the local cache
    remote = tmp_path / "bucket"
    url = postgres.new_database()
    writer = Registry(url, f"file://{remote}")
    v1 = writer.push("s", make_adapter(tmp_path / "a"), LINEAGE)
    assert (remote / "versions" / "s" / "1" / "manifest.json").is_file()
    reader = Registry(url, f"file://{remote}")  # another machine: nothing cached yet
    got = reader.get("s@1")
    assert got.path == tmp_path / "home" / "artifacts" / v1.manifest_sha256
    assert (got.path / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "a" / "adapter_model.safetensors"
    ).read_bytes()
    assert reader.verify_all() == {"s@1": None}

    v2 = writer.push("s", make_adapter(tmp_path / "b", seed=3), LINEAGE)
    weights = remote / "versions" / "s" / "2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # tampered in the bucket
    with pytest.raises(IntegrityError, match="s@2"):
        reader.get("s@2")
    assert not (tmp_path / "home" / "artifacts" / v2.manifest_sha256).exists()  # nothing bad cached

    orphan = remote / "versions" / "s" / "9"
    orphan.mkdir()
    (orphan / "junk").write_text("x")
    assert [Path(p).name for p, _ in writer.gc().removed] == ["9"]
    writer.remove("s@1", force=True)
    assert not (remote / "versions" / "s" / "1").exists()
