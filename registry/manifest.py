"""Manifests: the sha256 and size of every file of a version, checked before a version is used."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from registry.errors import IntegrityError

MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise IntegrityError(f"{p}: symbolic links are not allowed in a version folder")
        if p.is_file() and p.name != MANIFEST:
            out.append(p)
    return out


def build_manifest(folder: Path) -> dict[str, Any]:
    files = {
        p.relative_to(folder).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in _files(folder)
    }
    return {"format": 1, "files": files}


def write_manifest(folder: Path) -> str:
    """Write manifest.json into folder; return the sha256 of the manifest itself."""
    data = json.dumps(build_manifest(folder), indent=2, sort_keys=True).encode() + b"\n"
    path = folder / MANIFEST
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def verify(folder: Path, manifest_sha256: str | None, label: str) -> None:
    """Raise IntegrityError naming `label` when any file is missing, extra, or altered."""
    path = folder / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{label}: manifest.json is missing from {folder}")
    raw = path.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise IntegrityError(f"{label}: manifest.json was altered (sha256 differs from the catalog)")
    expected = json.loads(raw)["files"]
    actual = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing:
        raise IntegrityError(f"{label}: missing file(s) {missing}")
    if extra:
        raise IntegrityError(f"{label}: unexpected extra file(s) {extra}")
    for rel, meta in expected.items():
        p = actual[rel]
        if p.stat().st_size != meta["size"] or file_sha256(p) != meta["sha256"]:
            raise IntegrityError(f"{label}: {rel} does not match its sha256 (tampered or truncated)")


def fsync_tree(folder: Path) -> None:
    for p in _files(folder):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
