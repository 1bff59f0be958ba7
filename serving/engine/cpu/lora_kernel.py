"""The compiled fused LoRA op (lora_bf16.c): build, load, pack weights, call.

One C call per LoRA layer and step computes every slice's shrink and expand for every adapter row
of the batch with AMX-BF16 tiles (AVX512-BF16 dot products on CPUs without AMX), accumulating into
the output in place. The library is
built by `make setup` (`python -m serving.engine.cpu.lora_kernel`) into
`$LORA_PLATFORM_HOME/kernels/`, named by the source's sha256, and built on first use when missing.
Beside it, a record of the library's own sha256 written at build time: a library that does not
match it (a file put into the cache by anything but this install's build) is never loaded; it is
logged and built again.
Machines without AVX512-BF16 or without a C compiler keep the torch path of cpu_lora.py; so does
`LORA_PLATFORM_NO_FUSED_LORA=1`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

ENV_DISABLE = "LORA_PLATFORM_NO_FUSED_LORA"
ENV_NO_AMX = "LORA_PLATFORM_NO_AMX_LORA"
ENV_THREADS = "LORA_PLATFORM_LORA_THREADS"
"""Threads per kernel call: unset or 0 = the engine's OpenMP pool, 1 = the calling thread only."""
SOURCE = Path(__file__).with_name("lora_bf16.c")
FLAGS = [
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512bf16",
    "-mamx-tile",
    "-mamx-bf16",
    "-fopenmp",
    "-shared",
    "-fPIC",
]
MAX_RANKS = 1024
"""slices x rank of one layer, as compiled (MAXRT)."""
AMX_MAX_K = 16384
"""The widest input (K padded to 32) the AMX variant takes (MAXK); wider layers run on AVX512."""


class KernelCallError(ValueError):
    """Arguments that would make the compiled op read or write outside its buffers; raised before
    the C call, which checks none of them."""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supported() -> bool:
    """True on a CPU with AVX512-BF16 (Linux /proc/cpuinfo)."""
    return {"avx512_bf16", "avx512bw", "avx512vl"} <= _cpu_flags()


def cpu_has_amx() -> bool:
    return {"amx_tile", "amx_bf16"} <= _cpu_flags()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """True on a CPU with bf16 instructions (x86 AVX512-BF16 or AMX-BF16, ARM BF16); elsewhere bf16
    products are emulated. Also True where the CPU's features cannot be read (no /proc/cpuinfo)."""
    flags = _cpu_flags() if flags is None else flags
    return not flags or bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


Dtype = Literal["auto", "float32", "bfloat16"]


def cpu_dtype(setting: Dtype, flags: set[str] | None = None) -> Dtype:
    """The dtype a CPU engine runs for the `--dtype` setting: `auto` (the model's own, bf16 for
    SmolLM2) becomes float32 on a CPU without bf16 instructions (x86 without AVX512-BF16 or
    AMX-BF16, such as AMD Zen 2/3; ARM without BF16), where bf16 products are emulated: 3.5x slower
    than float32 on SmolLM2-135M (README). An explicit dtype is kept, and so is `auto` where the
    CPU's features cannot be read (no /proc/cpuinfo)."""
    if setting == "auto" and not cpu_has_bf16(flags):
        log.info("dtype auto: float32 (this CPU has no bf16 instructions)")
        return "float32"
    return setting


def _source_digest() -> str:
    """sha256 of the C source and the compiler flags: what a library of this install is built from."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()


def library_path() -> Path:
    from registry.basemodels import home

    return home() / "kernels" / f"lora_bf16-{_source_digest()[:16]}.so"


def record_path(library: Path) -> Path:
    """The sidecar written when `library` was built: its sha256 and the source digest it came from."""
    return library.with_suffix(".sha256.json")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def mismatch(library: Path) -> str | None:
    """Why `library` is not the one this install built (None: it is). A library is loaded only
    if its sha256 matches the record written beside it at build time, and the record names this
    install's source digest: a file put into the cache by anything else is never loaded."""
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return "no build record beside it"
    if not isinstance(record, dict) or record.get("source_sha256") != _source_digest():
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


def build() -> Path:
    """The library this install built: compiled if it is not there yet, and compiled again if the
    file there is not the one recorded at build time (`mismatch`, logged); atomic (temp files renamed
    into place, the record before the library: a process that finds no library builds its own)."""
    out = library_path()
    if out.exists():
        reason = mismatch(out)
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
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}: {proc.stderr.strip()[-2000:]}")
        record = {"library_sha256": _file_sha256(Path(tmp)), "source_sha256": _source_digest()}
        _write_atomic(record_path(out), json.dumps(record).encode())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Kernel:
    """The library's two entry points: AVX512-BF16, and AMX where the CPU and the OS allow it."""

    def __init__(self, lib: Any) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        argtypes = [p, i64, p, i64, p, p, i64, p, p, i64, i64, i64, p, p, ctypes.c_float]
        self.avx512 = lib.lora_bf16_fused
        self.amx = lib.lora_bf16_fused_amx
        for fn in (self.avx512, self.amx):
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        self.use_amx = cpu_has_amx() and os.environ.get(ENV_NO_AMX) != "1" and lib.lora_amx_init() == 0
        lib.lora_set_threads(int(os.environ.get(ENV_THREADS) or 0))
        self.pack_pairs = lib.lora_pack_pairs
        self.pack_pairs.argtypes = [p, i64, p, i64, i64, i64, i64]
        self.pack_pairs.restype = None

    @property
    def name(self) -> str:
        """What bf16 LoRA layers run on: 'amx' or 'avx512'."""
        return "amx" if self.use_amx else "avx512"

    def pick(self, layer: PackedLayer) -> Any:
        """The variant for this layer: AMX where its tiles fit the rank and the input width."""
        rank_fits = layer.r <= 32 or layer.r % 32 == 0
        k_fits = -(-layer.k // 32) * 32 <= AMX_MAX_K
        return self.amx if self.use_amx and rank_fits and k_fits else self.avx512


@cache
def load() -> Kernel | None:
    """The compiled kernel, or None (with the reason logged once) where it cannot run."""
    if os.environ.get(ENV_DISABLE) == "1":
        return None
    if not cpu_supported():
        log.info("fused LoRA op off: this CPU has no AVX512-BF16")
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as exc:
        log.warning("fused LoRA op off: %s", exc)
        return None
    return Kernel(lib)


class PackedLayer:
    """One LoRA layer's weights for the kernel: per slot, pointers to an adapter's packed blocks.

    a_stacked[i]: [slots, 1, R, K]; b_stacked[i]: [slots, 1, n_i, R] (vLLM's layout). A slot points
    at the layer's own buffers (`repack(slots)`: packed from vLLM's stacked weights, in place) or at
    blocks packed once and kept with an adapter (`pack(slot)`, then `point(slot, blocks)`), so an
    adapter that comes back to a slot is not packed or copied again. The pointer tables and buffers
    never move (the bound call holds their addresses); the layer holds every block a slot points at.
    """

    def __init__(self, a_stacked: tuple[Any, ...], b_stacked: tuple[Any, ...], sizes: tuple[int, ...]):
        import torch

        slots, _, self.rank, k = a_stacked[0].shape
        self.a_stacked, self.b_stacked, self.n = a_stacked, b_stacked, tuple(sizes)
        r = self.rank + self.rank % 2  # the kernel takes pairs of ranks
        s = len(a_stacked)
        self.rt = -(-s * r // 16) * 16
        self.k2 = -(-k // 32) * 16  # K padded to 32 (one AMX tile of bf16)
        self.npad = tuple(-(-n // 16) * 16 for n in sizes)
        self.a = torch.zeros(slots, self.k2 * self.rt * 2, dtype=torch.bfloat16)
        self.b = torch.zeros(slots, r * sum(self.npad), dtype=torch.bfloat16)
        self.a_slots = (ctypes.c_void_p * slots)()  # the kernel's pointer tables, slot -> block
        self.b_slots = (ctypes.c_void_p * slots)()
        self._held: list[tuple[Any, Any] | None] = [None] * slots
        self.k, self.r, self.s = k, r, s
        self.offs = torch.tensor([sum(sizes[:i]) for i in range(s)], dtype=torch.int64)
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        self.ok = s * r <= MAX_RANKS
        # where slice i's A^T and B^T go in a block: (element offset, stride between pairs of rows)
        self._a_dst = [(i * r * 2, self.rt * 2) for i in range(s)]
        self._b_dst = [(r * sum(self.npad[:i]), npad * 2) for i, npad in enumerate(self.npad)]
        self.repack(range(slots))

    def repack(self, slots: Any) -> None:
        """Pack the adapters now in `slots` from vLLM's stacked weights into the layer's own buffers
        and point the slots at them."""
        for slot in slots:
            self._pack_into(slot, self.a[slot], self.b[slot])
            self.point(slot, (self.a[slot], self.b[slot]))

    def pack(self, slot: int, compiled: bool = True) -> tuple[Any, Any]:
        """New blocks (A, B) packed from the adapter in `slot` of vLLM's stacked weights, to keep
        (compiled=False: with torch copies, not the library)."""
        import torch

        blocks = (torch.zeros_like(self.a[slot]), torch.zeros_like(self.b[slot]))
        self._pack_into(slot, *blocks, compiled=compiled)
        return blocks

    def pack_weights(self, lora_a: list[Any], lora_b: list[Any]) -> tuple[Any, Any] | None:
        """New blocks (A, B) packed from one adapter's own weights, per slice A [r, K] and B [n, r]
        (None for both: no weights for that slice), r up to the layer's rank; as `pack` would pack
        them from vLLM's stacked weights. None where they do not fit the layer or the library."""
        import torch

        kernel = load()
        if kernel is None or len(lora_a) != self.s or len(lora_b) != self.s:
            return None
        for a, b, n in zip(lora_a, lora_b, self.n, strict=True):
            if a is None and b is None:
                continue
            if a is None or b is None or a.dim() != 2 or b.dim() != 2:
                return None
            if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or a.device.type != "cpu":
                return None
            if a.shape[0] > self.rank or a.shape[1] != self.k or b.shape[1] != a.shape[0] or b.shape[0] > n:
                return None
        blocks = (torch.zeros_like(self.a[0]), torch.zeros_like(self.b[0]))
        self._pack_pairs(kernel, *blocks, lora_a, lora_b)
        return blocks

    def _pack_pairs(
        self, kernel: Kernel, a_out: Any, b_out: Any, lora_a: list[Any], lora_b: list[Any]
    ) -> None:
        """One lora_pack_pairs call per slice and matrix: A^T [K, r] into the slice's columns of
        a_out, B^T [r, n] into its block of b_out (bf16, any strides; None: slice left as it is)."""
        a_ptr, b_ptr = a_out.data_ptr(), b_out.data_ptr()
        for (a_off, a_d0), (b_off, b_d0), a, b in zip(self._a_dst, self._b_dst, lora_a, lora_b, strict=True):
            if a is None:
                continue
            r = a.shape[0]
            kernel.pack_pairs(a_ptr + 2 * a_off, a_d0, a.data_ptr(), a.stride(1), a.stride(0), self.k, r)
            kernel.pack_pairs(b_ptr + 2 * b_off, b_d0, b.data_ptr(), b.stride(1), b.stride(0), r, b.shape[0])

    def point(self, slot: int, blocks: tuple[Any, Any]) -> None:
        """Make `slot` read `blocks` (from `pack`, or the layer's own buffers); no copy."""
        a, b = blocks
        for block, own in ((a, self.a), (b, self.b)):
            if block.numel() != own.shape[1] or block.dtype != own.dtype or not block.is_contiguous():
                raise KernelCallError("packed blocks of another layer's shape")
        self._held[slot] = blocks  # before the pointers: the kernel never reads freed memory
        self.a_slots[slot] = a.data_ptr()
        self.b_slots[slot] = b.data_ptr()

    def _pack_into(self, slot: int, a_out: Any, b_out: Any, compiled: bool = True) -> None:
        """Pack `slot` of vLLM's stacked weights into contiguous blocks: the library's packing for
        bf16, strided torch copies otherwise; padding is left zero."""
        import torch

        a_list = [w[slot, 0] for w in self.a_stacked]
        b_list = [w[slot, 0, :n] for w, n in zip(self.b_stacked, self.n, strict=True)]
        kernel = load() if compiled else None
        if kernel is not None and all(w.dtype == torch.bfloat16 for w in (*a_list, *b_list)):
            self._pack_pairs(kernel, a_out, b_out, a_list, b_list)
            return
        a = a_out.view(self.k2, self.rt, 2)  # [K2, RT, 2]: pairs of K next to each other
        for i, w in enumerate(a_list):
            _pairs_into(a[:, i * self.r : i * self.r + self.rank], w.t())
        for (off, _), w, npad in zip(self._b_dst, b_list, self.npad, strict=True):
            b = b_out[off : off + self.r * npad].view(self.r // 2, npad, 2)  # [r/2, npad, 2]
            _pairs_into(b[:, : w.shape[0]], w.t())


def _pairs_into(dst: Any, src: Any) -> None:
    """dst[i // 2, j, i % 2] = src[i, j] for every row i of src (dst: [rows/2 rounded up, cols, 2];
    an odd last row fills only the first of its pair, whose other half stays zero)."""
    even = src.shape[0] // 2 * 2
    dst[: even // 2].copy_(src[:even].unflatten(0, (even // 2, 2)).transpose(1, 2))
    if even < src.shape[0]:
        dst[even // 2, :, 0].copy_(src[even])


def bfloat16() -> Any:
    import torch

    return torch.bfloat16


class Rows:
    """One step's adapter rows, grouped by slot: int32 row indices and their slots (both 1-D,
    contiguous, the same length, none negative; KernelCallError otherwise)."""

    def __init__(self, rows: Any, slots: Any) -> None:
        import torch

        for name, t in (("rows", rows), ("slots", slots)):
            if t.dtype != torch.int32 or t.dim() != 1 or not t.is_contiguous():
                raise KernelCallError(f"{name} must be a contiguous 1-D int32 tensor")
        if rows.numel() != slots.numel():
            raise KernelCallError(f"{rows.numel()} rows but {slots.numel()} slots")
        self.rows, self.slots = rows, slots  # kept alive: the kernel reads their memory
        self.end = self.slot_end = 0
        if rows.numel():
            if int(rows.min()) < 0 or int(slots.min()) < 0:
                raise KernelCallError("a row or slot index is negative")
            self.end, self.slot_end = int(rows.max()) + 1, int(slots.max()) + 1
        self.args = (rows.data_ptr(), slots.data_ptr(), rows.numel())


def bind(kernel: Kernel, layer: PackedLayer) -> Any | None:
    """A call `f(x, y, rows, scale) -> bool` for this layer, arguments that never change bound once
    (per-call Python is a few microseconds); None when the layer's shape is outside the kernel."""
    if not layer.ok:
        return None
    fn = kernel.pick(layer)
    tail = (
        ctypes.addressof(layer.a_slots),
        ctypes.addressof(layer.b_slots),
        layer.k,
        layer.r,
        layer.s,
        layer.offs.data_ptr(),
        layer.sizes.data_ptr(),
    )
    k, width, slots = layer.k, sum(layer.n), layer.a.shape[0]
    bf16 = bfloat16()

    def call(x: Any, y: Any, rows: Rows, scale: float) -> bool:
        # 2-D bf16 rows with unit column stride; anything else goes back to the torch path
        if x.dtype is not bf16 or y.dtype is not bf16 or x.dim() != 2 or y.dim() != 2:
            return False
        if x.shape[1] != k or x.stride(1) != 1 or y.stride(1) != 1 or rows.end > min(x.shape[0], y.shape[0]):
            return False
        # the C code writes `width` columns of y and reads the packed weights of every slot listed
        if y.shape[1] < width:
            raise KernelCallError(f"y has {y.shape[1]} columns, the layer's slices write {width}")
        if rows.slot_end > slots:
            raise KernelCallError(f"slot {rows.slot_end - 1} listed, the layer packs {slots} slots")
        _ = layer  # keeps the packed weights alive as long as the call
        rc: int = fn(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), *rows.args, *tail, scale)
        return rc == 0

    return call


def run(kernel: Kernel, layer: PackedLayer, x: Any, y: Any, rows: Any, slots: Any, scale: float) -> bool:
    """y[rows] += LoRA(x[rows]) in place (rows: int32 grouped by slot); False when the call cannot be
    made, and the caller falls back to torch."""
    call = bind(kernel, layer)
    return call is not None and call(x, y, Rows(rows, slots), scale)


def main() -> None:
    """`python -m serving.engine.cpu.lora_kernel`: build the library (make setup runs this). Compiling
    needs no AVX512 (an image can be built on any x86 machine); running it does."""
    try:
        path = build()
    except RuntimeError as exc:
        print(f"lora_kernel: not built ({exc}); bf16 LoRA will take the torch path")
        return
    usable = "amx" if cpu_supported() and cpu_has_amx() else "avx512" if cpu_supported() else "torch path"
    print(f"lora_kernel: {path} (this CPU: {usable})")


if __name__ == "__main__":
    main()
