"""Replacement CPU LoRA ops for vLLM, installed as a `vllm.general_plugins` entry point.

vLLM's CPU LoRA ops (vllm.lora.ops.torch_ops) index the stacked adapter weights with each
token's slot, `w[idx]`, which (1) copies a `[tokens, out, r]` tensor per op call and (2)
treats index -1 ("no adapter") as the last slot: base-model rows batched with LoRA rows get
an adapter applied. These ops group rows by slot instead: one matrix product per distinct
adapter in the batch, rows with -1 untouched, no per-token weight copies, and a fast path
when the whole batch uses one slot. Same signatures as the stock ops.

On top of the ops, `PunicaWrapperCPU` is replaced by a subclass (make_wrapper_class) that
builds the batch's plan once per step and runs each LoRA layer, for bf16, as one call into the
compiled op of lora_kernel.py (every slice and adapter row at once); otherwise as two matrix
products per adapter present (slices fused), or two `bmm` over padded row segments for several
adapters.

`register()` runs in every vLLM process (the engine core and its workers load general
plugins), so the patch is active wherever the model runs.
"""

from __future__ import annotations

import os
from typing import Any

from serving.engine import lora_kernel

ENV_DISABLE = "LORA_PLATFORM_STOCK_CPU_LORA"
ENV_MARKER = "LORA_PLATFORM_PLUGIN_MARKER"
"""When set, register() appends its process id to this file (tests check the engine process)."""
ENV_NO_ONEDNN = "LORA_PLATFORM_NO_ONEDNN_LORA"
"""Set to 1 to compute single-adapter LoRA with aten products instead of vLLM's oneDNN GEMM."""
_ACTIVE = False


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


def make_wrapper_class() -> type:
    """A PunicaWrapperCPU whose per-step plan is built once in update_metadata.

    `add_lora_linear` runs, per slice and per adapter present, one product into a small
    shrink result and one in-place `addmm_` into the output slice, in the activations'
    dtype; `add_lora_logits` and `add_lora_embedding` skip slots whose adapter has no such
    weights (all zeros), and every method returns at once on a batch without adapters.
    """
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    class PlannedPunicaWrapperCPU(PunicaWrapperCPU):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._token_plan: list[tuple[int, Any]] = []
            self._slots: tuple[int, ...] = ()
            self._sampler_plan: list[tuple[int, Any]] = []
            self._segments: tuple[Any, Any, int, int] | None = None
            self._masks: dict[Any, Any] = {}
            self._ids: list[Any] = []
            self._empty: dict[tuple[int, int], bool] = {}
            self._fused: dict[tuple[int, tuple[int, ...]], tuple[Any, Any]] = {}
            self._dnnl: dict[tuple[int, tuple[int, ...]], tuple[Any, Any] | None] = {}
            self._packed: dict[int, Any] = {}
            self._layers: list[Any] = []
            self._rows: Any = None

        def update_metadata(
            self, mapping: Any, lora_index_to_id: list[Any], max_loras: int, vocab_size: int, **kwargs: Any
        ) -> None:
            super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
            self._token_plan = _groups(self.token_lora_indices)
            self._slots = tuple(s for s, _ in self._token_plan)
            self._sampler_plan = _groups(self.sampler_indices)
            # built on first use in this step: the compiled op needs only the rows, the torch path only
            # the segments
            self._segments, self._masks, self._rows = None, {}, None
            if list(lora_index_to_id) != self._ids:  # slots changed: forget derived weights
                ids = list(lora_index_to_id)
                changed = [i for i, v in enumerate(ids) if i >= len(self._ids) or self._ids[i] != v]
                self._ids = ids
                self._empty.clear()
                self._fused.clear()
                self._dnnl.clear()
                for layer in self._layers:  # the compiled op's packing: only the changed slots
                    layer.repack(changed)

        def _kernel_rows(self) -> Any:
            """This step's adapter rows grouped by slot, as the compiled op takes them."""
            if self._rows is None:
                import torch

                idx = self.token_lora_indices
                order = torch.argsort(idx, stable=True)
                order = order[idx[order] >= 0]
                self._rows = lora_kernel.Rows(
                    order.to(torch.int32).contiguous(), idx[order].to(torch.int32).contiguous()
                )
            return self._rows

        def _segment_plan(self) -> tuple[Any, Any, int, int]:
            """Rows of each adapter padded to one length: one gather, two bmm, one index_add per layer."""
            if self._segments is None:
                import torch

                width = max(len(rows) for _, rows in self._token_plan)
                gather = torch.zeros(len(self._token_plan), width, dtype=torch.long)
                mask = torch.zeros(len(self._token_plan), width, 1, dtype=torch.bool)
                for i, (_, rows) in enumerate(self._token_plan):
                    gather[i, : len(rows)] = rows
                    mask[i, : len(rows)] = True
                self._segments = (gather.view(-1), mask, len(self._token_plan), width)
            return self._segments

        def _is_empty(self, weights: Any, slot: int) -> bool:
            key = (id(weights), slot)
            if key not in self._empty:
                self._empty[key] = not bool(weights[slot].any())
            return self._empty[key]

        def _fused_weights(
            self,
            a_stacked: tuple[Any, ...],
            b_stacked: tuple[Any, ...],
            slots: tuple[int, ...],
            sizes: tuple[int, ...],
        ) -> tuple[Any, Any]:
            """Per slot: A of every slice stacked, B block-diagonal, both transposed for x @ A_t @ B_t."""
            import torch

            key = (id(a_stacked[0]), slots)
            if key not in self._fused:
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
                self._fused[key] = (a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous())
            return self._fused[key]

        def _onednn(self, a_stacked: tuple[Any, ...], a_t: Any, b_t: Any, x: Any) -> tuple[Any, Any] | None:
            """oneDNN handlers for one adapter's fused A and B, for half-precision activations only
            (float32 keeps aten's products, whose results the exact PEFT comparisons rely on)."""
            import torch

            if (
                x.dtype not in (torch.bfloat16, torch.float16)
                or a_t.dtype != x.dtype
                or os.environ.get(ENV_NO_ONEDNN)
            ):
                return None
            key = (id(a_stacked[0]), self._slots)
            if key not in self._dnnl:
                try:
                    from vllm import _custom_ops as ops

                    if not ops._supports_onednn:
                        raise RuntimeError("oneDNN not built")
                    self._dnnl[key] = (ops.create_onednn_mm(a_t[0], 32), ops.create_onednn_mm(b_t[0], 32))
                except (RuntimeError, AttributeError, ImportError):
                    self._dnnl[key] = None
            return self._dnnl[key]

        def _bind(
            self, a_stacked: tuple[Any, ...], b_stacked: tuple[Any, ...], sizes: tuple[int, ...], x: Any
        ) -> Any:
            """This layer's compiled-kernel call (lora_kernel.py), or False where the torch path runs."""
            kernel = lora_kernel.load()
            call = False
            if kernel is not None and a_stacked[0].dtype == x.dtype == lora_kernel.bfloat16():
                layer = lora_kernel.PackedLayer(a_stacked, b_stacked, tuple(sizes))
                call = lora_kernel.bind(kernel, layer) or False
                if call:
                    self._layers.append(layer)
            self._packed[id(a_stacked)] = call
            return call

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
            if not self._token_plan:
                return  # no adapter in this batch: no LoRA work at all
            # bf16 on AVX512-BF16/AMX CPUs: one compiled call for every slice and adapter row
            call = self._packed.get(id(lora_a_stacked))
            if call is None:
                call = self._bind(lora_a_stacked, lora_b_stacked, output_slices, x)
            if call and call(x, y, self._rows or self._kernel_rows(), scale):
                return
            import torch

            x2 = x.view(-1, x.shape[-1])
            y2 = y.view(-1, y.shape[-1])
            x2 = x2[: y2.shape[0]]
            width = sum(output_slices)
            a_t, b_t = self._fused_weights(lora_a_stacked, lora_b_stacked, self._slots, tuple(output_slices))
            target = y2[:, :width]
            if self._token_plan[0][1] is None:  # the whole batch on one adapter
                dnnl = self._onednn(lora_a_stacked, a_t, b_t, x2)
                if dnnl is not None:  # vLLM's oneDNN GEMM: ~2x faster than aten on these small bf16 shapes
                    from vllm import _custom_ops as ops

                    target.add_(
                        ops.onednn_mm(dnnl[1], ops.onednn_mm(dnnl[0], x2.contiguous(), None), None),
                        alpha=scale,
                    )
                    return
                h = x2.to(a_t.dtype) @ a_t[0]
                target.addmm_(h.to(target.dtype), b_t[0].to(target.dtype), alpha=scale)
                return
            gather, mask, slots, rows = self._segment_plan()
            if x2.dtype not in self._masks:
                self._masks[x2.dtype] = mask.to(x2.dtype)
            xs = x2.index_select(0, gather).view(slots, rows, -1) * self._masks[x2.dtype]
            h = torch.bmm(xs.to(a_t.dtype), a_t)
            out = torch.bmm(h, b_t).view(slots * rows, width)
            target.index_add_(0, gather, out.to(target.dtype), alpha=scale)

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
            plan = [(s, r) for s, r in self._sampler_plan if not self._is_empty(lora_b_stacked, s)]
            if not plan:
                return
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
            plan = [(s, r) for s, r in self._token_plan if not self._is_empty(lora_b_stacked, s)]
            if not plan:
                return
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
    if os.environ.get(ENV_DISABLE) == "1":
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
    _ACTIVE = True
    from vllm.platforms import current_platform

    # the compiled op, built here if `make setup` did not; None where it cannot run
    kernel = lora_kernel.load() if current_platform.is_cpu() else None
    marker = os.environ.get(ENV_MARKER)
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()} {kernel.name if kernel else 'torch'}\n")


def is_active() -> bool:
    """True when register() patched this process."""
    return _ACTIVE
