"""The compiled LoRA op is loaded only if it is the library this install built (issue 31, item 3):
a shared library put into the kernel cache by anything else (a crafted artifact-store listing, a
writable cache) never runs; the reason is logged and the library is built again. Every library of the
op: bf16 (AVX512-BF16/AMX) and float32 (AVX2/FMA, AVX512F)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("PLANTED_MARKER");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("the planted library ran", f); fclose(f); }
}
"""
LOAD = """
import ctypes, logging, sys
logging.basicConfig(level=logging.INFO)
from serving.engine.cpu import kernel_build, lora_kernel
name = sys.argv[1]
spec = {lib.name: lib for lib in lora_kernel.LIBRARIES}[name]
variant = name.removeprefix("lora_f32_")
if name == "lora_bf16" and lora_kernel.cpu_supported():
    lora_kernel.load()
elif variant in lora_kernel.F32_LIBRARIES and lora_kernel.f32_variant(want=variant):
    lora_kernel.load_f32(variant)
else:  # a CPU that cannot run this one: what load() would build
    kernel_build.build(spec)
ctypes.CDLL(str(spec.path()))  # whatever the cache holds now is what load() would take
"""
LIBRARIES = ["lora_bf16", "lora_f32_avx2", "lora_f32_avx512"]

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="no C compiler")


def _env(home: Path, marker: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PLATFORM_")}
    return {**keep, "PYTHONPATH": str(ROOT), "LORA_PLATFORM_HOME": str(home), "PLANTED_MARKER": str(marker)}


def _built(home: Path, env: dict[str, str], name: str) -> Path:
    setup = subprocess.run(
        [sys.executable, "-m", "serving.engine.cpu.lora_kernel"], env=env, capture_output=True, text=True
    )
    assert setup.returncode == 0, setup.stderr
    (library,) = (home / "kernels").glob(f"{name}-*.so")
    return library


@pytest.mark.parametrize("name", LIBRARIES)
@pytest.mark.parametrize("tamper", ["replace the library", "replace it and drop its record"])
def test_a_library_replaced_in_the_cache_is_never_loaded(tmp_path: Path, tamper: str, name: str) -> None:
    home, marker = tmp_path / "home", tmp_path / "planted-ran"
    env = _env(home, marker)
    library = _built(home, env, name)
    source = tmp_path / "planted.c"
    source.write_text(PLANTED)
    planted = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(planted)], check=True)
    shutil.copyfile(planted, library)  # what an escaped download or a writable cache would do
    if tamper.endswith("record"):
        library.with_suffix(".sha256.json").unlink()

    proc = subprocess.run(
        [sys.executable, "-c", LOAD, name], env=env, capture_output=True, text=True, timeout=300
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "the planted library was loaded"
    said = [line for line in proc.stderr.splitlines() if "not loaded" in line]
    assert len(said) == 1, proc.stderr[-3000:]
    assert library.name in said[0]
    assert ("no build record" if tamper.endswith("record") else "sha256 differs") in said[0]
    assert library.read_bytes() != planted.read_bytes()  # built again from this install's source


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_library_this_install_built_is_loaded_without_a_word(tmp_path: Path, name: str) -> None:
    home, marker = tmp_path / "home", tmp_path / "planted-ran"
    env = _env(home, marker)
    library = _built(home, env, name)
    mtime = library.stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, name], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not loaded" not in proc.stderr
    assert library.stat().st_mtime_ns == mtime  # not rebuilt
