"""A remote artifact store cannot place files outside the download folder (issue #31, item 3).

A real fsspec store (`memory://`, which keeps object names verbatim like S3 does) holds a version
pushed the normal way; then someone with write access to the bucket adds an object whose name
climbs out of the version folder, or rewrites the manifest to name such a file."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import fsspec
import pytest

from registry.artifacts import FsspecStore
from registry.errors import IntegrityError
from registry.manifest import write_manifest
from tests.registry.test_store import make_adapter


def _bucket(tmp_path: Path) -> tuple[FsspecStore, str, Path]:
    """A memory:// store with `support@3` published in it, and the store's local cache."""
    cache = tmp_path / "home" / "artifacts"
    store = FsspecStore(f"memory://bucket-{uuid.uuid4().hex}", cache)
    with store.staging() as staging:
        make_adapter(staging)
        sha = write_manifest(staging)
        store.publish(staging, "support", 3)
    return store, sha, cache


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_crafted_listing_writes_nothing_outside_and_is_refused(tmp_path: Path) -> None:
    store, sha, cache = _bucket(tmp_path)
    fs = fsspec.filesystem("memory")
    evil = f"{store.base}/versions/support/3/../../kernels/lora_bf16-0123.so"
    fs.pipe_file(evil, b"\x7fELF planted")
    assert evil in fs.find(f"{store.base}/versions/support/3")  # the store lists it verbatim
    before = _files_under(tmp_path)

    with pytest.raises(IntegrityError, match=r"support@3: the artifact store holds file\(s\) its manifest"):
        store.local_path("support", 3, sha, fetch=True)
    assert _files_under(tmp_path) == before  # nothing written anywhere, the temporary folder is gone
    assert not (cache.parent / "kernels").exists()

    fs.rm_file(evil)  # the bucket cleaned up: the same version now downloads and verifies
    path = store.local_path("support", 3, sha, fetch=True)
    assert path == cache / sha and (path / "adapter_model.safetensors").is_file()


def test_a_manifest_naming_a_path_outside_is_refused_before_writing(tmp_path: Path) -> None:
    """Even a manifest whose sha256 the catalog holds (a catalog row written by the attacker too)
    cannot name a file outside the folder: every local path is confined before it is written."""
    store, _, cache = _bucket(tmp_path)
    fs = fsspec.filesystem("memory")
    key = f"{store.base}/versions/support/3"
    manifest = json.loads(fs.cat_file(f"{key}/manifest.json"))
    manifest["files"]["../../kernels/x.so"] = {"sha256": "0" * 64, "size": 7}
    raw = json.dumps(manifest).encode()
    fs.pipe_file(f"{key}/manifest.json", raw)
    fs.pipe_file(f"{key}/../../kernels/x.so", b"planted")
    before = _files_under(tmp_path)

    with pytest.raises(IntegrityError, match=r"'\.\./\.\./kernels/x\.so' would leave the version folder"):
        store.local_path("support", 3, hashlib.sha256(raw).hexdigest(), fetch=True)
    assert _files_under(tmp_path) == before
    assert not (cache.parent / "kernels").exists()


def test_only_a_manifest_matching_the_catalog_is_followed(tmp_path: Path) -> None:
    """A manifest rewritten in the bucket (its sha256 no longer the catalog's) is refused before
    any file it names is downloaded."""
    store, sha, cache = _bucket(tmp_path)
    fs = fsspec.filesystem("memory")
    key = f"{store.base}/versions/support/3"
    fs.pipe_file(f"{key}/manifest.json", b'{"format": 1, "files": {"x.so": {"sha256": "0", "size": 1}}}')
    fs.pipe_file(f"{key}/x.so", b"planted")

    with pytest.raises(IntegrityError, match=r"support@3: manifest\.json was altered"):
        store.local_path("support", 3, sha, fetch=True)
    assert not (cache / sha).exists()
    assert not [p for p in cache.rglob("x.so")]
