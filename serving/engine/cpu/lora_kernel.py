"""The compiled fused LoRA op (lora_bf16.c, lora_f32.c): build, choose, load, pack weights, call.

One C call per LoRA layer and step computes every slice's shrink and expand for every adapter row
of the batch, accumulating into the output in place. Two sets of kernels, by the model's dtype:
- bf16: AMX-BF16 tiles, or AVX512-BF16 dot products on CPUs without AMX (lora_bf16.c);
- float32: AVX512F, or AVX2/FMA on CPUs without AVX512 (lora_f32.c, one source built twice): what
  serves `--dtype float32`, and `--dtype auto` on CPUs without bf16 instructions (AMD Zen 2/3).
The variant is chosen at run time from the CPU's flags (/proc/cpuinfo); LORA_PLATFORM_CPU_LORA_KERNEL
forces one (`avx512`, `avx2`, `torch`). A layer no compiled variant runs (a CPU without AVX2, no C
compiler, bf16 on a CPU without AVX512-BF16, `torch`) keeps the torch path of cpu_lora.py; so does
`LORA_PLATFORM_NO_FUSED_LORA=1`.
The libraries are built by `make setup` (`python -m serving.engine.cpu.lora_kernel`) into
`$LORA_PLATFORM_HOME/kernels/`, or on first use, and loaded only if their sha256 matches the record
written when this install built them (kernel_build.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any, Literal

from serving.engine.cpu import kernel_build
from serving.engine.cpu.kernel_build import Library

log = logging.getLogger(__name__)

ENV_DISABLE = "LORA_PLATFORM_NO_FUSED_LORA"
ENV_NO_AMX = "LORA_PLATFORM_NO_AMX_LORA"
ENV_THREADS = "LORA_PLATFORM_LORA_THREADS"
"""Threads per kernel call: unset or 0 = the engine's OpenMP pool, 1 = the calling thread only."""
ENV_KERNEL = "LORA_PLATFORM_CPU_LORA_KERNEL"
"""Which compiled LoRA kernels run: `auto` (default: the best the CPU has), `avx512` (bf16 on
AMX/AVX512-BF16, float32 on AVX512F), `avx2` (float32 on AVX2/FMA; bf16 on the torch path) or `torch`
(no compiled op). A forced variant the CPU lacks is refused (logged) and the torch path runs."""
VARIANTS = ("auto", "avx512", "avx2", "torch")
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
BF16_LIBRARY = Library("lora_bf16", SOURCE, tuple(FLAGS))
_F32_SOURCE = Path(__file__).with_name("lora_f32.c")
_F32_COMMON = ("-O3", "-fopenmp", "-shared", "-fPIC")
F32_LIBRARIES = {
    "avx2": Library("lora_f32_avx2", _F32_SOURCE, ("-mavx2", "-mfma", "-DVW=8", *_F32_COMMON)),
    "avx512": Library("lora_f32_avx512", _F32_SOURCE, ("-mavx512f", "-DVW=16", *_F32_COMMON)),
}
"""The float32 kernels: one source, 8-float (AVX2/FMA) and 16-float (AVX512F) vectors."""
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


def cpu_has_avx2(flags: set[str] | None = None) -> bool:
    """True on an x86 CPU with AVX2 and FMA (the float32 kernel's minimum)."""
    return {"avx2", "fma"} <= (_cpu_flags() if flags is None else flags)


def cpu_has_avx512f(flags: set[str] | None = None) -> bool:
    return "avx512f" in (_cpu_flags() if flags is None else flags)


def requested() -> str:
    """The variant LORA_PLATFORM_CPU_LORA_KERNEL asks for (`auto` when unset or not one of VARIANTS)."""
    value = (os.environ.get(ENV_KERNEL) or "auto").strip().lower()
    if value not in VARIANTS:
        log.warning("%s=%s is not one of %s: auto", ENV_KERNEL, value, ", ".join(VARIANTS))
        return "auto"
    return value


def f32_variant(flags: set[str] | None = None, want: str | None = None) -> str | None:
    """The float32 kernel for this CPU and request (`want`, default: the environment's): `avx512`,
    `avx2`, or None (the torch path). A forced variant the CPU lacks gives None, never an
    instruction the CPU would fault on."""
    flags = _cpu_flags() if flags is None else flags
    want = requested() if want is None else want
    if want == "auto":
        return "avx512" if cpu_has_avx512f(flags) else "avx2" if cpu_has_avx2(flags) else None
    has = {"avx512": cpu_has_avx512f(flags), "avx2": cpu_has_avx2(flags)}.get(want)
    if has is False:
        log.warning("%s=%s: this CPU lacks it; float32 LoRA takes the torch path", ENV_KERNEL, want)
    return want if has else None


def library_path() -> Path:
    """Where the bf16 library of this install is (or will be) built."""
    return BF16_LIBRARY.path()


LIBRARIES = (BF16_LIBRARY, *F32_LIBRARIES.values())


_ARGTYPES = [ctypes.c_void_p, ctypes.c_int64] * 2 + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
_ARGTYPES += [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_float]
"""(x, sx, y, sy, rows, slots, n_rows, a_slots, b_slots, K, R, S, offs, sizes, scale): every kernel's."""


class Kernel:
    """The bf16 library's two entry points: AVX512-BF16, and AMX where the CPU and the OS allow it."""

    group = 2
    """Ranks and K are packed in pairs (one 32-bit bf16 pair per dot product)."""

    def __init__(self, lib: Any) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        self.avx512 = lib.lora_bf16_fused
        self.amx = lib.lora_bf16_fused_amx
        for fn in (self.avx512, self.amx):
            fn.argtypes = _ARGTYPES
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


class F32Kernel:
    """A float32 library's entry point (lora_f32.c built for `name`: 'avx2' or 'avx512')."""

    group = 1

    def __init__(self, lib: Any, name: str) -> None:
        self.name = name
        self.fused = lib.lora_f32_fused
        self.fused.argtypes = _ARGTYPES
        self.fused.restype = ctypes.c_int
        lib.lora_set_threads(int(os.environ.get(ENV_THREADS) or 0))

    def pick(self, layer: PackedLayer) -> Any:
        return self.fused


def _open(spec: Library) -> Any | None:
    try:
        return ctypes.CDLL(str(kernel_build.build(spec)))
    except (OSError, RuntimeError) as exc:
        log.warning("fused LoRA op %s off: %s", spec.name, exc)
        return None


@cache
def load() -> Kernel | None:
    """The compiled bf16 kernel, or None (with the reason logged once) where it cannot run."""
    if os.environ.get(ENV_DISABLE) == "1" or requested() in ("avx2", "torch"):
        return None
    if not cpu_supported():
        log.info("fused bf16 LoRA op off: this CPU has no AVX512-BF16")
        return None
    lib = _open(BF16_LIBRARY)
    return None if lib is None else Kernel(lib)


@cache
def load_f32(want: str | None = None) -> F32Kernel | None:
    """The compiled float32 kernel: the one `want` names ('avx2', 'avx512'; default: the one the
    environment and the CPU choose, f32_variant), or None where it cannot run on this CPU."""
    if os.environ.get(ENV_DISABLE) == "1":
        return None
    name = f32_variant(want=want)
    if name is None:
        return None
    lib = _open(F32_LIBRARIES[name])
    return None if lib is None else F32Kernel(lib, name)


def for_dtype(dtype: Any) -> Kernel | F32Kernel | None:
    """The kernel for activations of a torch dtype (bf16 or float32), None for any other."""
    import torch

    return load() if dtype == torch.bfloat16 else load_f32() if dtype == torch.float32 else None


class PackedLayer:
    """One LoRA layer's weights for the kernel: per slot, pointers to an adapter's packed blocks.

    a_stacked[i]: [slots, 1, R, K]; b_stacked[i]: [slots, 1, n_i, R] (vLLM's layout). A slot points
    at the layer's own buffers (`repack(slots)`: packed from vLLM's stacked weights, in place) or at
    blocks packed once and kept with an adapter (`pack(slot)`, then `point(slot, blocks)`), so an
    adapter that comes back to a slot is not packed or copied again. The pointer tables and buffers
    never move (the bound call holds their addresses); the layer holds every block a slot points at.
    bf16 blocks hold pairs (of K in A, of ranks in B) side by side, as the dot-product instructions
    read them, K padded to 32 for AMX tiles; float32 blocks are plain rows (`group` 1).
    """

    def __init__(self, a_stacked: tuple[Any, ...], b_stacked: tuple[Any, ...], sizes: tuple[int, ...]):
        import torch

        slots, _, self.rank, k = a_stacked[0].shape
        self.a_stacked, self.b_stacked, self.n = a_stacked, b_stacked, tuple(sizes)
        self.dtype = a_stacked[0].dtype
        g = self.group = 2 if self.dtype == torch.bfloat16 else 1
        r = -(-self.rank // g) * g  # the bf16 kernels take pairs of ranks
        s = len(a_stacked)
        self.rt = -(-s * r // 16) * 16
        self.k2 = -(-k // 32) * 16 if g == 2 else k  # bf16: K padded to 32 (one AMX tile), in pairs
        self.npad = tuple(-(-n // 16) * 16 for n in sizes)
        self.a = torch.zeros(slots, self.k2 * self.rt * g, dtype=self.dtype)
        self.b = torch.zeros(slots, r * sum(self.npad), dtype=self.dtype)
        self.a_slots = (ctypes.c_void_p * slots)()  # the kernel's pointer tables, slot -> block
        self.b_slots = (ctypes.c_void_p * slots)()
        self._held: list[tuple[Any, Any] | None] = [None] * slots
        self.k, self.r, self.s = k, r, s
        self.offs = torch.tensor([sum(sizes[:i]) for i in range(s)], dtype=torch.int64)
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        self.ok = s * r <= MAX_RANKS
        # where slice i's A^T and B^T go in a block: (element offset, stride between groups of rows)
        self._a_dst = [(i * r * g, self.rt * g) for i in range(s)]
        self._b_dst = [(r * sum(self.npad[:i]), npad * g) for i, npad in enumerate(self.npad)]
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

        kernel = load() if self.group == 2 else None  # bf16 pairs are packed by the library
        if (self.group == 2 and kernel is None) or len(lora_a) != self.s or len(lora_b) != self.s:
            return None
        for a, b, n in zip(lora_a, lora_b, self.n, strict=True):
            if a is None and b is None:
                continue
            if a is None or b is None or a.dim() != 2 or b.dim() != 2:
                return None
            if a.dtype != self.dtype or b.dtype != self.dtype or a.device.type != "cpu":
                return None
            if a.shape[0] > self.rank or a.shape[1] != self.k or b.shape[1] != a.shape[0] or b.shape[0] > n:
                return None
        blocks = (torch.zeros_like(self.a[0]), torch.zeros_like(self.b[0]))
        if kernel is not None:
            self._pack_pairs(kernel, *blocks, lora_a, lora_b)
        else:
            self._copy_into(*blocks, lora_a, lora_b)
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
        kernel = load() if compiled and self.group == 2 else None
        if kernel is not None and all(w.dtype == torch.bfloat16 for w in (*a_list, *b_list)):
            self._pack_pairs(kernel, a_out, b_out, a_list, b_list)
            return
        self._copy_into(a_out, b_out, a_list, b_list)

    def _copy_into(self, a_out: Any, b_out: Any, lora_a: list[Any], lora_b: list[Any]) -> None:
        """Per slice, A^T [K, r] and B^T [r, n] into their places in the blocks with torch copies
        (float32: one strided copy each, nothing to interleave; bf16 without the library)."""
        g = self.group
        a = a_out.view(self.k2, self.rt, g)  # [K / g, RT, g]: groups of K next to each other
        for i, w in enumerate(lora_a):
            if w is not None:
                _groups_into(a[:, i * self.r : i * self.r + w.shape[0]], w.t())
        for (off, _), w, npad in zip(self._b_dst, lora_b, self.npad, strict=True):
            if w is not None:
                b = b_out[off : off + self.r * npad].view(self.r // g, npad, g)  # [r / g, npad, g]
                _groups_into(b[:, : w.shape[0]], w.t())


def _groups_into(dst: Any, src: Any) -> None:
    """dst[i // g, j, i % g] = src[i, j] for every row i of src (dst: [rows/g rounded up, cols, g],
    g 1 or 2; an odd last row fills only the first of its pair, whose other half stays zero)."""
    if dst.shape[2] == 1:
        dst[: src.shape[0], :, 0].copy_(src)
        return
    even = src.shape[0] // 2 * 2
    dst[: even // 2].copy_(src[:even].unflatten(0, (even // 2, 2)).transpose(1, 2))
    if even < src.shape[0]:
        dst[even // 2, :, 0].copy_(src[even])


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


def bind(kernel: Kernel | F32Kernel, layer: PackedLayer) -> Any | None:
    """A call `f(x, y, rows, scale) -> bool` for this layer, arguments that never change bound once
    (per-call Python is a few microseconds); None when the layer's shape is outside the kernel."""
    if not layer.ok or kernel.group != layer.group:  # a bf16 kernel for bf16 blocks, float32 for float32
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
    k, width, slots, dtype = layer.k, sum(layer.n), layer.a.shape[0], layer.dtype

    def call(x: Any, y: Any, rows: Rows, scale: float) -> bool:
        # 2-D rows of the layer's dtype with unit column stride; anything else goes back to torch
        if x.dtype is not dtype or y.dtype is not dtype or x.dim() != 2 or y.dim() != 2:
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


def run(
    kernel: Kernel | F32Kernel, layer: PackedLayer, x: Any, y: Any, rows: Any, slots: Any, scale: float
) -> bool:
    """y[rows] += LoRA(x[rows]) in place (rows: int32 grouped by slot); False when the call cannot be
    made, and the caller falls back to torch."""
    call = bind(kernel, layer)
    return call is not None and call(x, y, Rows(rows, slots), scale)


def main() -> None:
    """`python -m serving.engine.cpu.lora_kernel`: build the libraries (make setup runs this), each on
    its own (an old compiler without AMX flags still builds the float32 ones). Compiling needs no
    AVX512 or AVX2 (an image can be built on any x86 machine); running does."""
    for spec in LIBRARIES:
        try:
            print(f"lora_kernel: {kernel_build.build(spec)}")
        except RuntimeError as exc:
            print(f"lora_kernel: {spec.name} not built ({exc}); its layers will take the torch path")
    bf16 = "amx" if cpu_supported() and cpu_has_amx() else "avx512" if cpu_supported() else "torch path"
    f32 = f32_variant(want="auto") or "torch path"
    print(f"lora_kernel: this CPU runs bf16 LoRA on {bf16}, float32 LoRA on {f32}")


if __name__ == "__main__":
    main()
