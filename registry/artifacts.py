"""Where version files live: a folder (local disk or a shared mount) or any fsspec URL.

Layout under the store's root: `versions/<name>/<n>/` (adapter files, lineage.json, README.md,
manifest.json) and `.staging/` (pushes in progress). A version's files are published before its
catalog row is written, so a reader never sees a row without files; files without a row are
orphans that `gc` removes.

A folder store is read in place. A remote store (`s3://`, `gs://`, `hf://`, `file://`, ...) is
copied on first use into a local cache keyed by the manifest's sha256 and verified there. The
copy is driven by the manifest, never by the store's listing: the manifest is fetched first and
must match the catalog's sha256, only the files it names are downloaded, each to a path checked to
stay inside the temporary folder, and a listing with any other name is refused before anything is
written (whoever can write to the bucket cannot place a file elsewhere on the replica).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from registry.errors import IntegrityError, RegistryError, UnavailableError
from registry.manifest import MANIFEST, confined, manifest_files, verify
from registry.refs import check_name


class ArtifactStore(ABC):
    """Publishes, reads and deletes version folders."""

    location: str
    """Where the files are, for messages (never a secret)."""

    @abstractmethod
    def staging(self) -> AbstractContextManager[Path]:
        """A fresh local folder to assemble a version in; removed afterwards."""

    @abstractmethod
    def publish(self, staging: Path, name: str, version: int) -> None:
        """Make the assembled folder the files of `name@version`."""

    @abstractmethod
    def local_path(self, name: str, version: int, manifest_sha256: str, fetch: bool = False) -> Path:
        """The local folder of the version's files; with `fetch`, a remote store copies them there
        first (verified) if they are not there yet."""

    @abstractmethod
    def delete(self, name: str, version: int) -> None: ...

    @abstractmethod
    def orphans(self, known: set[tuple[str, int]]) -> list[str]:
        """Version folders that are not one of the `known` (name, version) pairs."""

    @abstractmethod
    def staging_folders(self) -> list[tuple[str, float]]:
        """Staging folders with the seconds since anything in them changed."""

    @abstractmethod
    def remove(self, location: str) -> None:
        """Remove an orphan or staging folder named by `orphans` / `staging_folders`."""


class FolderStore(ArtifactStore):
    """Version folders on a filesystem: the registry folder itself, or a shared mount."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)

    def version_dir(self, name: str, version: int) -> Path:
        versions = (self.root / "versions").resolve()
        path = (versions / check_name(name) / str(int(version))).resolve()
        if not path.is_relative_to(versions):
            raise IntegrityError(f"{name}@{version}: version folder escapes the registry root")
        return path

    def staging(self) -> AbstractContextManager[Path]:
        return _staging_folder(self.root / ".staging")  # same filesystem: the rename is atomic

    def publish(self, staging: Path, name: str, version: int) -> None:
        target = self.version_dir(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # an orphan of a crashed push: no row points at it
            shutil.rmtree(target)
        os.rename(staging, target)
        _fsync_dir(target.parent)

    def local_path(self, name: str, version: int, manifest_sha256: str, fetch: bool = False) -> Path:
        return self.version_dir(name, version)

    def delete(self, name: str, version: int) -> None:
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def orphans(self, known: set[tuple[str, int]]) -> list[str]:
        out = []
        for name_dir in sorted((self.root / "versions").iterdir()):
            for vdir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
                if not vdir.name.isdigit() or (name_dir.name, int(vdir.name)) not in known:
                    out.append(str(vdir))
            if name_dir.is_dir() and not any(name_dir.iterdir()):
                name_dir.rmdir()
        return out

    def staging_folders(self) -> list[tuple[str, float]]:
        out = []
        for staging in sorted((self.root / ".staging").iterdir()):
            try:
                out.append((str(staging), time.time() - _newest_mtime(staging)))
            except FileNotFoundError:  # the push committed (renamed it) meanwhile
                continue
        return out

    def remove(self, location: str) -> None:
        path = Path(location)
        shutil.rmtree(path, ignore_errors=True)
        parent = path.parent
        if parent.parent == self.root / "versions" and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


class FsspecStore(ArtifactStore):
    """Version folders under an fsspec URL, cached locally by manifest sha256 on first use."""

    def __init__(self, url: str, cache: Path) -> None:
        import fsspec

        try:
            self.fs, self.base = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise RegistryError(f"artifact store {url!r}: {exc}") from exc
        self.base = self.base.rstrip("/")
        self.location = url
        self.cache = Path(cache)
        self.cache.mkdir(parents=True, exist_ok=True)

    def _key(self, name: str, version: int) -> str:
        return f"{self.base}/versions/{check_name(name)}/{int(version)}"

    def staging(self) -> AbstractContextManager[Path]:
        return _staging_folder(self.cache / ".staging")  # uploaded file by file by `publish`

    def publish(self, staging: Path, name: str, version: int) -> None:
        key = self._key(name, version)
        try:
            if self.fs.exists(key):  # an orphan of a crashed push
                self.fs.rm(key, recursive=True)
            for f in sorted(p for p in staging.rglob("*") if p.is_file()):
                remote = f"{key}/{f.relative_to(staging).as_posix()}"
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
                self.fs.put_file(str(f), remote)
        except OSError as exc:
            raise UnavailableError(f"artifact store {self.location}: upload failed: {exc}") from exc

    def local_path(self, name: str, version: int, manifest_sha256: str, fetch: bool = False) -> Path:
        target = self.cache / manifest_sha256
        if target.is_dir() or not fetch:
            return target
        tmp = self.cache / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            self._download(self._key(name, version), manifest_sha256, f"{name}@{version}", tmp)
            os.rename(tmp, target)
        except OSError as exc:
            raise UnavailableError(f"artifact store {self.location}: download failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _download(self, key: str, manifest_sha256: str, label: str, tmp: Path) -> None:
        """Copy the files the manifest names (and only those) into `tmp`, then verify them."""
        try:
            raw = self.fs.cat_file(f"{key}/{MANIFEST}")
        except FileNotFoundError:
            raise IntegrityError(f"{label}: manifest.json is missing from the artifact store") from None
        files = manifest_files(raw, manifest_sha256, label)
        listed = {str(p) for p in self.fs.find(key)}
        unknown = sorted(listed - {f"{key}/{rel}" for rel in [MANIFEST, *files]})
        if unknown:
            shown = [p[len(key) + 1 :] if p.startswith(key + "/") else p for p in unknown]
            raise IntegrityError(
                f"{label}: the artifact store holds file(s) its manifest does not list: {shown}"
            )
        (tmp / MANIFEST).write_bytes(raw)
        for rel in files:
            local = confined(tmp, rel, label)
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(f"{key}/{rel}", str(local))
            except FileNotFoundError:
                raise IntegrityError(f"{label}: {rel} is missing from the artifact store") from None
        verify(tmp, manifest_sha256, label)

    def delete(self, name: str, version: int) -> None:
        key = self._key(name, version)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)

    def orphans(self, known: set[tuple[str, int]]) -> list[str]:
        out: list[str] = []
        root = f"{self.base}/versions"
        if not self.fs.exists(root):
            return out
        for name_dir in self.fs.ls(root, detail=False):
            for vdir in self.fs.ls(name_dir, detail=False):
                name, number = name_dir.rstrip("/").rsplit("/", 1)[-1], vdir.rstrip("/").rsplit("/", 1)[-1]
                if not number.isdigit() or (name, int(number)) not in known:
                    out.append(vdir)
        return out

    def staging_folders(self) -> list[tuple[str, float]]:
        return []  # pushes stage in a local temporary folder; nothing is staged remotely

    def remove(self, location: str) -> None:
        self.fs.rm(location, recursive=True)


@contextmanager
def _staging_folder(parent: Path) -> Iterator[Path]:
    path = parent / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_store(spec: str | Path, cache: Path) -> ArtifactStore:
    """A folder path -> FolderStore; a URL with a scheme (`s3://`, `file://`, ...) -> FsspecStore."""
    text = str(spec)
    if "://" in text:
        return FsspecStore(text, cache)
    return FolderStore(Path(text).expanduser())


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a folder and the files directly in it (a copy touches both)."""
    times = [path.lstat().st_mtime]
    if path.is_dir():
        times += [p.lstat().st_mtime for p in path.iterdir()]
    return max(times)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
