"""Replacement CPU LoRA ops for vLLM, installed as a `vllm.general_plugins` entry point.

vLLM's CPU LoRA ops (vllm.lora.ops.torch_ops) index the stacked adapter weights with each
token's slot, `w[idx]`, which (1) copies a `[tokens, out, r]` tensor per op call and (2)
treats index -1 ("no adapter") as the last slot: base-model rows batched with LoRA rows get
an adapter applied. These ops group rows by slot instead: one matrix product per distinct
adapter in the batch, rows with -1 untouched, no per-token weight copies, and a fast path
when the whole batch uses one slot. Same signatures as the stock ops.

`register()` runs in every vLLM process (the engine core and its workers load general
plugins), so the patch is active wherever the model runs.
"""

from __future__ import annotations

import os
from typing import Any

ENV_DISABLE = "LORA_PLATFORM_STOCK_CPU_LORA"
ENV_MARKER = "LORA_PLATFORM_PLUGIN_MARKER"
"""When set, register() appends its process id to this file (tests check the engine process)."""
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
        if rows is None:
            if add_inputs:
                target[:, : y.shape[1]] += y
            else:
                target[:, : y.shape[1]] = y
        elif add_inputs:
            target[:, : y.shape[1]].index_add_(0, rows, y)
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
    _ACTIVE = True
    marker = os.environ.get(ENV_MARKER)
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")


def is_active() -> bool:
    """True when register() patched this process."""
    return _ACTIVE
