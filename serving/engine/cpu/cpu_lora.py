"""Replacement CPU LoRA ops for vLLM, installed as a `vllm.general_plugins` entry point.

vLLM's CPU LoRA ops (vllm.lora.ops.torch_ops) index the stacked adapter weights with each
token's slot, `w[idx]`, which (1) copies a `[tokens, out, r]` tensor per op call and (2)
treats index -1 ("no adapter") as the last slot: base-model rows batched with LoRA rows get
an adapter applied. These ops group rows by slot instead: one matrix product per distinct
adapter in the batch, rows with -1 untouched, no per-token weight copies, and a fast path
when the whole batch uses one slot. Same signatures as the stock ops.

On top of the ops, `PunicaWrapperCPU` is replaced by a subclass (make_wrapper_class) that
builds the batch's plan once per step (StepPlan) and runs each LoRA layer, for bf16 and float32, as
one call into the compiled op of lora_kernel.py (CompiledLoRA: every slice and adapter row at once);
otherwise on the torch path (TorchLoRA: two matrix products for one adapter, slices fused, or two
`bmm` over padded row segments for several adapters).

It also installs, on CPU, lora_slots.py: a step evicts only adapter slots it does not use, and
add_lora leaves the slots alone; lora_files.py: vLLM's loader reads an adapter file in one pass;
and cpu_norms.py: RMSNorm on vLLM's compiled CPU kernels instead of its PyTorch reference.

`register()` runs in every vLLM process of the environment (the engine core and its workers load
general plugins), so the patch is active wherever the model runs, a user's own `vllm serve`
included; it logs one line saying so. LORA_PLATFORM_STOCK_CPU_LORA=1 switches it off, and so does a
vLLM version outside the tested range (serving/engine/cpu/__init__.py, TESTED_VLLM: one log line).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from serving.engine.cpu import cpu_norms, lora_files, lora_kernel, lora_slots, refuse_untested

ENV_DISABLE = "LORA_PLATFORM_STOCK_CPU_LORA"
"""Set to 1 to leave vLLM's own CPU LoRA ops in place (register() then changes nothing)."""
ENV_MARKER = "LORA_PLATFORM_PLUGIN_MARKER"
"""When set, register() appends its process id to this file (tests check the engine process)."""
ENV_NO_ONEDNN = "LORA_PLATFORM_NO_ONEDNN_LORA"
"""Set to 1 to compute single-adapter LoRA with aten products instead of vLLM's oneDNN GEMM."""
_ACTIVE = False
STATS: Counter[str] = Counter()
"""Per process: `layers_bound` (LoRA layers on the compiled op), `slot_packs` (a layer's slot packed
from an adapter's or vLLM's weights) and `slot_reuses` (pointed at an adapter's blocks, kept since)."""
log = logging.getLogger("vllm.lora_platform")  # under vLLM's logger: printed with its own lines


def _groups(indices: Any) -> list[tuple[int, Any]]:
    """[(slot, row index tensor or None for all rows)] for each slot >= 0 present in indices."""
    import torch

    slots = torch.unique(indices)
    if slots.numel() == 1:
        slot = int(slots.item())
        return [] if slot < 0 else [(slot, None)]
    out = []
    for s in slots.tolist():
        if s >= 0:
            out.append((int(s), (indices == s).nonzero(as_tuple=True)[0]))
    return out


def _weights(w: Any, slot: int) -> Any:
    return w[slot, 0] if w.dim() == 4 else w[slot]


def bgmv_shrink(
    inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    rank = lora_a_weights.shape[-2]
    tokens = inputs.shape[0]
    out = output_tensor[:tokens, :rank]
    groups = _groups(lora_indices_tensor[:tokens])
    if not (len(groups) == 1 and groups[0][1] is None):
        out.zero_()
    for slot, rows in groups:
        w = _weights(lora_a_weights, slot).to(out.dtype)
        x = inputs if rows is None else inputs.index_select(0, rows)
        y = x.to(out.dtype) @ w.t()
        if scaling != 1.0:
            y.mul_(scaling)
        if rows is None:
            out.copy_(y)
        else:
            out.index_copy_(0, rows, y)


def _add_rows(target: Any, update: Any, rows: Any, alpha: float = 1.0) -> None:
    """target[rows] += alpha * update over their common columns (every row when rows is None)."""
    width = min(update.shape[1], target.shape[1])
    if rows is None:
        target[:, :width].add_(update[:, :width], alpha=alpha)
    else:
        target[:, :width].index_add_(0, rows, update[:, :width], alpha=alpha)


def _expand_into(inputs: Any, lora_b_weights: Any, target: Any, indices: Any, add_inputs: bool) -> None:
    tokens = target.shape[0]
    groups = _groups(indices[:tokens])
    if not add_inputs and not (len(groups) == 1 and groups[0][1] is None):
        target.zero_()
    width = target.shape[1]
    for slot, rows in groups:
        w = _weights(lora_b_weights, slot)[:width].to(target.dtype)
        x = inputs[:tokens] if rows is None else inputs.index_select(0, rows)
        y = x.to(target.dtype) @ w.t()
        if add_inputs:
            _add_rows(target, y, rows)
        elif rows is None:
            target[:, : y.shape[1]] = y
        else:
            target[:, : y.shape[1]].index_copy_(0, rows, y)


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    _expand_into(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)


def bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    target = output_tensor[:, slice_offset : slice_offset + slice_size]
    _expand_into(inputs, lora_b_weights, target, lora_indices_tensor, add_inputs)


def _explode(lora_indices_tensor: Any, seq_len_tensor: Any) -> Any:
    import torch

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(
    inputs: Any,
    lora_a_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    bgmv_expand(
        inputs, lora_b_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), add_inputs
    )


def sgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    bgmv_expand_slice(
        inputs,
        lora_b_weights,
        output_tensor,
        _explode(lora_indices_tensor, seq_len_tensor),
        slice_offset,
        slice_size,
        add_inputs,
    )


class StepPlan:
    """One step's batch: the rows of each adapter slot, and the layouts the LoRA layers derive
    from them, built on first use (the compiled op needs only its rows, the torch path only the
    padded segments) and kept for every layer of the step."""

    def __init__(self, token_indices: Any = None, sampler_indices: Any = None) -> None:
        self.tokens = [] if token_indices is None else _groups(token_indices)
        self.slots = tuple(s for s, _ in self.tokens)
        self.sampler = [] if sampler_indices is None else _groups(sampler_indices)
        self._indices = token_indices
        self._layouts: dict[Any, Any] = {}

    def kernel_rows(self) -> lora_kernel.Rows:
        """The adapter rows grouped by slot, as the compiled op takes them."""
        rows = self._layouts.get("rows")
        if rows is None:
            import torch

            idx = self._indices
            order = torch.argsort(idx, stable=True)
            order = order[idx[order] >= 0]
            rows = lora_kernel.Rows(
                order.to(torch.int32).contiguous(), idx[order].to(torch.int32).contiguous()
            )
            self._layouts["rows"] = rows
        return rows

    def segments(self, dtype: Any) -> tuple[Any, Any, int, int]:
        """Rows of each adapter padded to one length (gather index, row mask in `dtype`, adapters,
        length): one gather, two bmm, one index_add per layer."""
        seg = self._layouts.get(dtype)
        if seg is None:
            import torch

            width = max(len(rows) for _, rows in self.tokens)
            gather = torch.zeros(len(self.tokens), width, dtype=torch.long)
            mask = torch.zeros(len(self.tokens), width, 1, dtype=dtype)
            for i, (_, rows) in enumerate(self.tokens):
                gather[i, : len(rows)] = rows
                mask[i, : len(rows)] = 1
            seg = self._layouts[dtype] = (gather.view(-1), mask, len(self.tokens), width)
        return seg


class CompiledLoRA:
    """The compiled op of lora_kernel.py, one bound call per LoRA layer (bf16 on AVX512-BF16/AMX
    CPUs, float32 on AVX512F or AVX2/FMA): every slice and adapter row in one C call. Cache: the layer's stacked A weights (held by
    the entry, so their id is not reused) -> its packed weights and call, or None for the torch path.

    A slot of a layer is a pointer to an adapter's packed blocks. When vLLM activates an adapter it
    copies the adapter's weights into every layer's stacked weights (set_lora, ~9 ms for SmolLM2 r=16
    all-linear); for a layer on the compiled op, `take` packs them from the adapter's own weights
    instead (once: the blocks are kept while vLLM keeps the adapter's weights, 9.8 MB per adapter)
    and points the slot at them, and vLLM's copy is made only if the torch path ever runs for that
    layer (`run`). An adapter back in a slot costs a pointer per layer."""

    def __init__(self) -> None:
        self._layers: dict[int, tuple[Any, lora_kernel.PackedLayer, Any] | None] = {}
        # an adapter's weights for one layer (its first A tensor, vLLM's LoRAModel holds it) -> blocks
        from torch.utils.weak import WeakIdKeyDictionary  # tensors compare by value: keyed by identity

        self._kept: WeakIdKeyDictionary = WeakIdKeyDictionary()
        # (layer, slot) -> vLLM's copy of the adapter pointed at there, not made yet
        self._behind: dict[tuple[int, int], Callable[[], None]] = {}

    def run(
        self, y: Any, x: Any, a_stacked: Any, b_stacked: Any, sizes: Any, plan: StepPlan, scale: float
    ) -> bool:
        """y += LoRA(x) for the plan's adapter rows; False where the torch path must do it (vLLM's
        stacked weights of this layer are brought up to date first)."""
        try:
            entry = self._layers[id(a_stacked)]
        except KeyError:
            entry = self._bind(a_stacked, b_stacked, tuple(sizes), x)
        if entry is not None and entry[2](x, y, plan.kernel_rows(), scale):
            return True
        for key in [k for k in self._behind if k[0] == id(a_stacked)]:
            self._behind.pop(key)()
        return False

    def _bind(
        self, a_stacked: Any, b_stacked: Any, sizes: tuple[int, ...], x: Any
    ) -> tuple[Any, lora_kernel.PackedLayer, Any] | None:
        kernel = lora_kernel.for_dtype(x.dtype)
        entry = None
        if kernel is not None and a_stacked[0].dtype == x.dtype:
            layer = lora_kernel.PackedLayer(a_stacked, b_stacked, sizes)
            call = lora_kernel.bind(kernel, layer)
            entry = None if call is None else (a_stacked, layer, call)
            STATS["layers_bound"] += entry is not None
        self._layers[id(a_stacked)] = entry
        return entry

    def take(self, a_stacked: Any, slot: int, lora_a: Any, lora_b: Any, copy: Callable[[], None]) -> bool:
        """vLLM is about to copy an adapter's weights (`lora_a`, `lora_b`: a tensor, or one per
        slice) into `slot` of the layer whose stacked A weights are `a_stacked`. On a layer bound to
        the compiled op, point the slot at the adapter's packed blocks instead and keep vLLM's `copy`
        for later; False (vLLM copies now) elsewhere."""
        entry = self._layers.get(id(a_stacked))
        if entry is None:
            return False
        layer = entry[1]
        a_list = lora_a if isinstance(lora_a, list) else [lora_a]
        b_list = lora_b if isinstance(lora_b, list) else [lora_b]
        key = next((a for a in a_list if a is not None), None)
        if key is None:
            return False
        blocks: tuple[Any, Any] | None = self._kept.get(key)  # type: ignore[no-untyped-call]
        if blocks is None:
            blocks = layer.pack_weights(a_list, b_list)
            if blocks is None:
                return False
            self._kept[key] = blocks
            STATS["slot_packs"] += 1
        else:
            STATS["slot_reuses"] += 1
        layer.point(slot, blocks)
        self._behind[(id(a_stacked), slot)] = copy
        return True

    def copied(self, a_stacked: Any, slot: int) -> None:
        """vLLM wrote `slot` of this layer's stacked weights itself (set_lora or reset_lora)."""
        self._behind.pop((id(a_stacked), slot), None)

    def repack(self, slots: list[int]) -> None:
        """The adapters in `slots` changed: a slot that vLLM wrote into its stacked weights is
        packed from them, in place; a slot `take` pointed at an adapter's blocks keeps them."""
        for slot in slots:
            for key, entry in self._layers.items():
                if entry is not None and (key, slot) not in self._behind:
                    entry[1].repack([slot])
                    STATS["slot_packs"] += 1


class _Fused:
    """One layer's weights for one set of adapter slots: A of every slice stacked, B
    block-diagonal, both transposed for x @ a_t @ b_t; and vLLM's oneDNN handles for them."""

    def __init__(
        self,
        a_stacked: tuple[Any, ...],
        b_stacked: tuple[Any, ...],
        slots: tuple[int, ...],
        sizes: tuple[int, ...],
    ):
        import torch

        self.key_weights = a_stacked  # held: the cache key is its id
        a = torch.stack([torch.cat([_weights(w, s) for w in a_stacked], 0) for s in slots])
        ranks = [w.shape[-1] for w in b_stacked]
        b = torch.zeros(len(slots), sum(sizes), sum(ranks), dtype=b_stacked[0].dtype)
        out = col = 0
        for w, size, rank in zip(b_stacked, sizes, ranks, strict=True):
            for i, s in enumerate(slots):
                b[i, out : out + size, col : col + rank] = _weights(w, s)[:size]
            out += size
            col += rank
        # both stored as the right-hand operand of a contiguous matmul: [S, in, sum r], [S, sum r, out]
        self.a_t, self.b_t = a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()
        self._dnnl: tuple[Any, Any] | None = None
        self._dnnl_tried = False

    def onednn(self, x: Any) -> tuple[Any, Any] | None:
        """oneDNN handlers for a single adapter, for half-precision activations only (float32 keeps
        aten's products, whose results the exact PEFT comparisons rely on)."""
        if not self._dnnl_tried:
            self._dnnl_tried = True
            import torch

            if (
                x.dtype in (torch.bfloat16, torch.float16)
                and self.a_t.dtype == x.dtype
                and not os.environ.get(ENV_NO_ONEDNN)
            ):
                try:
                    from vllm import _custom_ops as ops

                    if ops._supports_onednn:
                        self._dnnl = (
                            ops.create_onednn_mm(self.a_t[0], 32),
                            ops.create_onednn_mm(self.b_t[0], 32),
                        )
                except (RuntimeError, AttributeError, ImportError):
                    pass
        return self._dnnl


class TorchLoRA:
    """The torch path of a LoRA layer: two products for a batch on one adapter (vLLM's oneDNN GEMM
    for bf16/fp16, ~2x faster than aten on these small shapes), two `bmm` over padded row segments
    for several. Cache: (layer's stacked A weights, adapter slots) -> their fused weights."""

    def __init__(self) -> None:
        self._fused: dict[tuple[int, tuple[int, ...]], _Fused] = {}

    def clear(self) -> None:
        self._fused.clear()

    def run(
        self, y: Any, x: Any, a_stacked: Any, b_stacked: Any, sizes: Any, plan: StepPlan, scale: float
    ) -> None:
        import torch

        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])[: y2.shape[0]]
        width = sum(sizes)
        key = (id(a_stacked), plan.slots)
        fused = self._fused.get(key)
        if fused is None:
            fused = self._fused[key] = _Fused(a_stacked, b_stacked, plan.slots, tuple(sizes))
        a_t, b_t, target = fused.a_t, fused.b_t, y2[:, :width]
        if plan.tokens[0][1] is None:  # the whole batch on one adapter
            dnnl = fused.onednn(x2)
            if dnnl is not None:
                from vllm import _custom_ops as ops

                target.add_(
                    ops.onednn_mm(dnnl[1], ops.onednn_mm(dnnl[0], x2.contiguous(), None), None), alpha=scale
                )
                return
            h = x2.to(a_t.dtype) @ a_t[0]
            target.addmm_(h.to(target.dtype), b_t[0].to(target.dtype), alpha=scale)
            return
        gather, mask, slots, rows = plan.segments(x2.dtype)
        xs = x2.index_select(0, gather).view(slots, rows, -1) * mask
        h = torch.bmm(xs.to(a_t.dtype), a_t)
        out = torch.bmm(h, b_t).view(slots * rows, width)
        target.index_add_(0, gather, out.to(target.dtype), alpha=scale)


class ZeroSlots:
    """Which slots of a stacked weight (logits, embeddings) are all zeros, i.e. their adapter has
    no such weights. Cache: (weights' id, slot) -> bool, forgotten for a slot whose adapter changes."""

    def __init__(self) -> None:
        self._zero: dict[tuple[int, int], bool] = {}

    def forget(self, slots: list[int]) -> None:
        self._zero = {k: v for k, v in self._zero.items() if k[1] not in slots}

    def plan(self, weights: Any, groups: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        """The groups whose slot has non-zero weights."""
        out = []
        for slot, rows in groups:
            zero = self._zero.get((id(weights), slot))
            if zero is None:
                zero = self._zero[(id(weights), slot)] = not bool(weights[slot].any())
            if not zero:
                out.append((slot, rows))
        return out


def make_wrapper_class() -> type:
    """A PunicaWrapperCPU whose per-step plan (StepPlan) is built once in update_metadata.

    `add_lora_linear` runs CompiledLoRA where it can, TorchLoRA otherwise; `add_lora_logits` and
    `add_lora_embedding` skip slots whose adapter has no such weights (ZeroSlots); every method
    returns at once on a batch without adapters.
    """
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    class PlannedPunicaWrapperCPU(PunicaWrapperCPU):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._plan = StepPlan()
            self._ids: list[Any] = []
            self._compiled = CompiledLoRA()
            self._torch = TorchLoRA()
            self._zero = ZeroSlots()

        def take_lora(
            self, a_stacked: Any, slot: int, lora_a: Any, lora_b: Any, copy: Callable[[], None]
        ) -> bool:
            """lora_slots.py asks before vLLM's set_lora: True when the compiled op took the adapter
            (CompiledLoRA.take) and vLLM's copy is left for later."""
            return self._compiled.take(a_stacked, slot, lora_a, lora_b, copy)

        def lora_copied(self, a_stacked: Any, slot: int) -> None:
            """lora_slots.py tells after vLLM wrote a slot of a layer's stacked weights itself."""
            self._compiled.copied(a_stacked, slot)

        def update_metadata(
            self, mapping: Any, lora_index_to_id: list[Any], max_loras: int, vocab_size: int, **kwargs: Any
        ) -> None:
            super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
            self._plan = StepPlan(self.token_lora_indices, self.sampler_indices)
            ids = list(lora_index_to_id)
            if ids != self._ids:  # slots changed: forget what was derived from their weights
                changed = [i for i, v in enumerate(ids) if i >= len(self._ids) or self._ids[i] != v]
                self._ids = ids
                self._zero.forget(changed)
                self._torch.clear()
                self._compiled.repack(changed)

        def add_lora_linear(
            self,
            y: Any,
            x: Any,
            lora_a_stacked: tuple[Any, ...],
            lora_b_stacked: tuple[Any, ...],
            scale: float,
            output_slices: tuple[int, ...],
            *,
            buffer: Any = None,
            **kwargs: Any,
        ) -> None:
            plan = self._plan
            if not plan.tokens:
                return  # no adapter in this batch: no LoRA work at all
            if not self._compiled.run(y, x, lora_a_stacked, lora_b_stacked, output_slices, plan, scale):
                self._torch.run(y, x, lora_a_stacked, lora_b_stacked, output_slices, plan, scale)

        def add_lora_logits(
            self,
            y: Any,
            x: Any,
            lora_a_stacked: Any,
            lora_b_stacked: Any,
            scale: float,
            *,
            buffer: Any = None,
            **kwargs: Any,
        ) -> None:
            plan = self._zero.plan(lora_b_stacked, self._plan.sampler)
            y2 = y.view(-1, y.shape[-1])
            x2 = x.view(-1, x.shape[-1])
            for slot, rows in plan:
                a = _weights(lora_a_stacked, slot)
                b = _weights(lora_b_stacked, slot)
                xs = x2 if rows is None else x2.index_select(0, rows)
                _add_rows(y2, ((xs.to(a.dtype) @ a.t()) @ b.t()).to(y2.dtype), rows, scale)

        def add_lora_embedding(
            self, y: Any, x: Any, lora_b_stacked: Any, add_inputs: bool = True, **kwargs: Any
        ) -> None:
            plan = self._zero.plan(lora_b_stacked, self._plan.tokens)
            y2 = y.view(-1, y.shape[-1])
            x2 = x.view(-1, x.shape[-1])
            for slot, rows in plan:
                b = _weights(lora_b_stacked, slot)
                xs = x2 if rows is None else x2.index_select(0, rows)
                _add_rows(y2, (xs.to(b.dtype) @ b.t()).to(y2.dtype), rows)

    return PlannedPunicaWrapperCPU


OPS = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


def register() -> None:
    """vLLM general-plugin hook: swap the CPU LoRA ops in every module that bound them."""
    global _ACTIVE
    if os.environ.get(ENV_DISABLE) == "1" or refuse_untested():
        return
    import importlib

    for module_name in (
        "vllm.lora.ops.torch_ops.lora_ops",
        "vllm.lora.ops.torch_ops",
        "vllm.lora.punica_wrapper.punica_cpu",
    ):
        module = importlib.import_module(module_name)
        for name, fn in OPS.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
    if not getattr(punica_cpu.PunicaWrapperCPU, "_lora_platform", False):
        wrapper = make_wrapper_class()
        wrapper._lora_platform = True  # type: ignore[attr-defined]
        punica_cpu.PunicaWrapperCPU = wrapper  # type: ignore[attr-defined]
    from vllm.platforms import current_platform

    norms = False
    if current_platform.is_cpu():  # measured on CPU only; GPUs keep vLLM's slot handling
        lora_slots.install()
        lora_files.install()
        norms = cpu_norms.install()
    _ACTIVE = True

    # the compiled op, built here if `make setup` did not; None where it cannot run
    kernel = lora_kernel.load() if current_platform.is_cpu() else None
    f32 = lora_kernel.load_f32() if current_platform.is_cpu() else None
    bf16_name, f32_name = kernel.name if kernel else "torch", f32.name if f32 else "torch"
    log.info(
        "lora-platform plugin active in process %d: vLLM's CPU LoRA ops replaced (bf16 LoRA: %s, "
        "float32 LoRA: %s)%s; set %s=1 to use vLLM's own",
        os.getpid(),
        bf16_name,
        f32_name,
        ", RMSNorm on vLLM's CPU kernels" if norms else "",
        ENV_DISABLE,
    )
    marker = os.environ.get(ENV_MARKER)
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()} {bf16_name} {f32_name}\n")


def is_active() -> bool:
    """True when register() patched this process."""
    return _ACTIVE
