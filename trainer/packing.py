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

Padding-free batches (`training.padding_free`, TRL's setting of the same name): the rows of a batch
are laid end to end in one sequence (`FlatCollator`), so no position is padding, and the batch is
the same rows a padded batch holds, so the loss is the same. Attention must stay inside each row.
On GPUs, TRL does this with FlashAttention's variable-length kernel; PyTorch's CPU attention has no
variable-length form, and a block-diagonal mask over the whole sequence would cost attention over
every pair of positions in the batch (for 8 rows of 100 tokens, 8 times the work). `row_attention`
is a small attention implementation registered with transformers' `AttentionInterface`: it runs
PyTorch's causal `scaled_dot_product_attention` on each row's slice, the rows' bounds taken from the
`cu_seq_lens_q` the flattening collator returns, on every device; without them (generation,
evaluation batches of other shapes) it is transformers' own sdpa.
"""

from __future__ import annotations

from typing import Any

from trainer.template import IGNORE, Encoded

ATTENTION_FOR_PACKING = ("sdpa", "eager", "flex_attention")
"""Attention implementations that turn restarting position ids into a block-diagonal mask."""

ROW_ATTENTION = "platform_row_sdpa"
"""The name `row_attention` is registered under with transformers (`register_row_attention`)."""


def row_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention within each row of one flattened sequence (`cu_seq_lens_q` bounds the rows);
    transformers' sdpa for anything else."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths = (bounds[1:] - bounds[:-1]).tolist()
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    # split, not slices: the backward of a split is one concatenation, of a slice a zero-filled copy
    rows = [
        torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)), strict=True)
    ]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous(), None


def use_row_attention(model: Any) -> bool:
    """Switches `model` (a transformers model) to `row_attention`; False (unchanged) where its
    attention is not one of transformers' swappable implementations."""
    if not getattr(model, "_supports_attention_backend", False):
        return False
    model.set_attn_implementation(register_row_attention())
    return True


def register_row_attention() -> str:
    """Registers `row_attention` (and sdpa's mask for its other uses) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, row_attention)
    AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)
    return ROW_ATTENTION


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


class FlatCollator:
    """Lays a batch of rows end to end in one sequence: position ids restart per row, the first label
    of each row is ignored, and `cu_seq_lens_q/k` bound the rows for `row_attention`."""

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(  # type: ignore[no-untyped-call]
            return_tensors="pt", separator_id=IGNORE, return_flash_attn_kwargs=True
        )

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        out = self.flatten(batch)
        # the row bounds as int64 (int32 is for FlashAttention); its max lengths are not needed
        return {
            "input_ids": out["input_ids"],
            "labels": out["labels"],
            "position_ids": out["position_ids"],
            "cu_seq_lens_q": out["cu_seq_lens_q"].long(),
            "cu_seq_lens_k": out["cu_seq_lens_k"].long(),
        }


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
    """Packed blocks (training with packing), or rows: laid end to end (`padding_free`) or padded;
    with `completion_logits`, the batch also says which positions' logits the loss needs."""

    def __init__(self, pad_id: int, completion_logits: bool = False, padding_free: bool = False) -> None:
        self.rows: FlatCollator | PaddedCollator = FlatCollator() if padding_free else PaddedCollator(pad_id)
        self.packed = PackedCollator(pad_id)
        self.completion_logits = completion_logits

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.packed(batch) if "rows" in batch[0] else self.rows(batch)
        return keep_completion_logits(out) if self.completion_logits else out


def dataset(items: list[Any], packed: bool) -> RowDataset | BlockDataset:
    return BlockDataset(items) if packed else RowDataset(items)
