"""Manifests: the sha256 and size of every file of a version, checked before a version is used."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

from registry.errors import IntegrityError

MANIFEST = "manifest.json"
RACY_NS = 2_000_000_000
"""A file changed this close to when it was hashed is hashed again next time: a write in the same
tick of the file system's clock could leave its size and times as they were (git's racy rule)."""
_HASHED: OrderedDict[tuple[object, ...], str] = OrderedDict()
_HASHED_MAX = 4096
_HASHED_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unchanged_file_sha256(path: Path) -> str:
    """file_sha256, remembered in this process for a file whose inode, size, mtime and ctime are
    those it had when hashed (any write, rename over it or chmod changes its ctime, which no user
    call can set back). For a process that checks the same files again and again (a server loading
    versions back into memory); `registry verify` and pushes always read every byte."""
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASHED_LOCK:
        digest = _HASHED.get(key)
        if digest is not None:
            _HASHED.move_to_end(key)
            return digest
    started = time.time_ns()
    digest = file_sha256(path)
    if max(st.st_mtime_ns, st.st_ctime_ns) < started - RACY_NS:
        with _HASHED_LOCK:
            _HASHED[key] = digest
            while len(_HASHED) > _HASHED_MAX:
                _HASHED.popitem(last=False)
    return digest


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


def manifest_files(raw: bytes, manifest_sha256: str, label: str) -> list[str]:
    """The file names a manifest lists, once its own sha256 matches the catalog's; every name is a
    plain relative path (no `..`, no absolute path). IntegrityError naming `label` otherwise."""
    if hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise IntegrityError(f"{label}: manifest.json was altered (sha256 differs from the catalog)")
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{label}: manifest.json is not a manifest ({exc})") from None
    if not isinstance(files, dict):
        raise IntegrityError(f"{label}: manifest.json is not a manifest (files is not a mapping)")
    for rel in files:
        check_relative(rel, label)
        if rel == MANIFEST:
            raise IntegrityError(f"{label}: manifest.json lists itself")
    return sorted(files)


def check_relative(rel: str, label: str) -> PurePosixPath:
    """`rel` as a path that stays inside the folder it is joined to: relative, no `.`/`..` part,
    no backslash or NUL. IntegrityError naming `label` otherwise."""
    path = PurePosixPath(rel)
    parts = rel.split("/")
    if (
        not rel
        or path.is_absolute()
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in rel
        or "\0" in rel
    ):
        raise IntegrityError(f"{label}: file name {rel!r} would leave the version folder")
    return path


def confined(folder: Path, rel: str, label: str) -> Path:
    """`folder / rel`, checked to resolve inside `folder` (IntegrityError naming `label` if not)."""
    path = (folder / check_relative(rel, label)).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise IntegrityError(f"{label}: file name {rel!r} would leave the version folder")
    return path


def verify(folder: Path, manifest_sha256: str | None, label: str, rehash_unchanged: bool = True) -> None:
    """Raise IntegrityError naming `label` when any file is missing, extra, or altered; with
    rehash_unchanged=False, a file this process hashed before and that has not changed since (its
    stat) is not read again (unchanged_file_sha256)."""
    digest = file_sha256 if rehash_unchanged else unchanged_file_sha256
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
        if p.stat().st_size != meta["size"] or digest(p) != meta["sha256"]:
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
