"""Datasets and collators for the Trainer: padded rows, or packed blocks whose rows stay apart.

Packing: each block of whole rows (`trainer.template.pack`) is flattened by transformers'
`DataCollatorWithFlattening` (position ids restart at 0 for every row; the first label of every
row is ignored). With no attention mask and no KV cache, transformers builds a block-diagonal
causal mask from those position ids (`masking_utils.find_packed_sequence_indices`) for the sdpa,
eager and flex attention implementations, on CPU and GPU, so no row attends to another. The
blocks of a batch are then stacked; a block's tail padding gets its own restarting position ids
and ignored labels, so it is a separate (unused) sequence too.

The model must run with `use_cache=False` while training on packed blocks: with a cache object,
transformers skips the packed-sequence detection and the rows would attend across boundaries.

Completion-only logits: the loss reads the logits of completion positions only, yet a causal LM
computes its output head (hidden x vocabulary, 49,152 columns for SmolLM2) and the float32 loss for
every position, prompt and padding included. When the model takes a tensor `logits_to_keep` and its
loss takes `shift_labels` (transformers' causal LMs), the collator adds both: the positions some row
of the batch predicts a completion token at, and the targets there. The loss is the same (the
dropped positions carried no target); the head's work shrinks to those positions. TRL and Axolotl
reach the same saving with Liger's fused linear cross-entropy, a Triton kernel (GPU only); this
works on every device.
"""

from __future__ import annotations

from typing import Any

from trainer.template import IGNORE, Encoded

ATTENTION_FOR_PACKING = ("sdpa", "eager", "flex_attention")
"""Attention implementations that turn restarting position ids into a block-diagonal mask."""


class RowDataset:
    """Map-style dataset of encoded rows for the HF Trainer."""

    def __init__(self, rows: list[Encoded]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


class BlockDataset:
    """Map-style dataset of packed blocks (lists of whole rows)."""

    def __init__(self, blocks: list[list[Encoded]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"rows": [{"input_ids": r.input_ids, "labels": r.labels} for r in self.blocks[i]]}


class PaddedCollator:
    """Right-pads a batch of rows to its longest row, with an attention mask."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = [b["input_ids"] + [self.pad_id] * (width - len(b["input_ids"])) for b in batch]
        labels = [b["labels"] + [IGNORE] * (width - len(b["labels"])) for b in batch]
        mask = [[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


class PackedCollator:
    """Flattens each block with position ids restarting per row, then stacks the blocks."""

    def __init__(self, pad_id: int) -> None:
        from transformers import DataCollatorWithFlattening

        self.pad_id = pad_id
        self.flatten = DataCollatorWithFlattening(return_tensors="pt", separator_id=IGNORE)  # type: ignore[no-untyped-call]

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        flat = [self.flatten(item["rows"]) for item in batch]
        width = max(f["input_ids"].shape[1] for f in flat)
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "position_ids": []}
        for f in flat:
            pad = width - f["input_ids"].shape[1]
            out["input_ids"].append(torch.nn.functional.pad(f["input_ids"][0], (0, pad), value=self.pad_id))
            out["labels"].append(torch.nn.functional.pad(f["labels"][0], (0, pad), value=IGNORE))
            out["position_ids"].append(torch.cat([f["position_ids"][0], torch.arange(pad)]))
        return {key: torch.stack(values) for key, values in out.items()}


def keep_completion_logits(batch: dict[str, Any]) -> dict[str, Any]:
    """Adds `logits_to_keep` (positions some row predicts a target at) and their `shift_labels`."""
    import torch

    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    keep = (shifted != IGNORE).any(dim=0).nonzero().flatten()
    if keep.numel() == 0:  # a batch without targets: keep one position so shapes stay valid
        keep = torch.zeros(1, dtype=torch.long)
    return {**batch, "logits_to_keep": keep, "shift_labels": shifted[:, keep].contiguous()}


def takes_completion_logits(model: Any) -> bool:
    """Whether the causal LM under any peft wrapper takes a tensor `logits_to_keep` and computes its
    loss with transformers' `ForCausalLMLoss` (which reads `shift_labels`)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return False
    loss = getattr(inner, "loss_function", None)
    return getattr(loss, "__name__", "") == "ForCausalLMLoss"


class Collator:
    """Packed blocks (training with packing) or padded rows (evaluation, training without);
    with `completion_logits`, the batch also says which positions' logits the loss needs."""

    def __init__(self, pad_id: int, completion_logits: bool = False) -> None:
        self.padded = PaddedCollator(pad_id)
        self.packed = PackedCollator(pad_id)
        self.completion_logits = completion_logits

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.packed(batch) if "rows" in batch[0] else self.padded(batch)
        return keep_completion_logits(out) if self.completion_logits else out


def dataset(items: list[Any], packed: bool) -> RowDataset | BlockDataset:
    return BlockDataset(items) if packed else RowDataset(items)
