"""Building the compiled LoRA op's shared libraries, and refusing any this install did not build.

Each library (`Library`: a C source and its compiler flags) is built into `$LORA_PLATFORM_HOME/kernels/`,
named by the sha256 of its source and flags. Beside it, a record of the library's own sha256 written at
build time: a library that does not match it (a file put into the cache by anything but this install's
build) is never loaded; it is logged and built again. lora_kernel.py lists the libraries (bf16 for
AVX512-BF16/AMX, float32 for AVX2/FMA and for AVX512F).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Library:
    """One shared library of the compiled op: its name, the C source and the compiler flags."""

    name: str
    source: Path
    flags: tuple[str, ...]

    def digest(self) -> str:
        """sha256 of the C source and the compiler flags: what a library of this install is built from."""
        return hashlib.sha256(self.source.read_bytes() + " ".join(self.flags).encode()).hexdigest()

    def path(self) -> Path:
        from registry.basemodels import home

        return home() / "kernels" / f"{self.name}-{self.digest()[:16]}.so"


def record_path(library: Path) -> Path:
    """The sidecar written when `library` was built: its sha256 and the source digest it came from."""
    return library.with_suffix(".sha256.json")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def mismatch(spec: Library, library: Path) -> str | None:
    """Why `library` is not the one this install built from `spec` (None: it is). A library is loaded
    only if its sha256 matches the record written beside it at build time, and the record names this
    install's source digest: a file put into the cache by anything else is never loaded."""
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return "no build record beside it"
    if not isinstance(record, dict) or record.get("source_sha256") != spec.digest():
        return "its build record is for another source"
    if record.get("library_sha256") != _file_sha256(library):
        return "its sha256 differs from the one recorded when it was built"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(spec: Library) -> Path:
    """The library this install built from `spec`: compiled if it is not there yet, and compiled again
    if the file there is not the one recorded at build time (`mismatch`, logged); atomic (temp files
    renamed into place, the record before the library: a process that finds no library builds its own)."""
    out = spec.path()
    if out.exists():
        reason = mismatch(spec, out)
        if reason is None:
            return out
        log.warning("compiled LoRA op %s not loaded: %s; building it again", out.name, reason)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *spec.flags, str(spec.source), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {spec.source.name}: {proc.stderr.strip()[-2000:]}")
        record = {"library_sha256": _file_sha256(Path(tmp)), "source_sha256": spec.digest()}
        _write_atomic(record_path(out), json.dumps(record).encode())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
