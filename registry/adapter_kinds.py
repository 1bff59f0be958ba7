"""Which kinds of peft LoRA adapters the platform serves, checked at `registry add` and push.

Served: plain LoRA and rsLoRA (`use_rslora`: scale alpha/sqrt(r) instead of alpha/r; vLLM reads
the flag from `adapter_config.json` and scales the same way as peft). Refused with the reason,
instead of failing later at load time or, worse, serving different weights than were trained:

- DoRA (`use_dora`, `lora_magnitude_vector` tensors): the update rescales every weight column by a
  learned magnitude, which vLLM's batched LoRA kernels do not implement;
- `modules_to_save`: full trained copies of base layers (often `lm_head`/`embed_tokens`); vLLM
  batches low-rank deltas over one shared base and cannot swap whole layers per request;
- added tokens (`trainable_token_indices`, full `embed_tokens`/`lm_head` weights after
  `resize_token_embeddings`): every adapter on a server shares the base's vocabulary;
- `lora_bias`: trained bias vectors, which vLLM does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.errors import InvalidAdapterError

LORA_FACTORS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")
WHAT_TO_DO = "merge it into the base model (peft merge_and_unload) and serve that, or retrain without it"


def check_adapter_kind(folder: Path, config: dict[str, Any], tensor_names: tuple[str, ...]) -> None:
    """InvalidAdapterError naming what is unsupported in this adapter and why; nothing for a
    plain LoRA or rsLoRA."""
    problems = []
    if config.get("use_dora") or any(".lora_magnitude_vector" in n for n in tensor_names):
        problems.append(
            "DoRA (use_dora) is not supported: it rescales each weight column by a learned magnitude, "
            "which vLLM cannot batch with other adapters"
        )
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {sorted(config['modules_to_save'])} is not supported: those are full trained "
            "copies of base layers, and vLLM serves every adapter on one shared base (low-rank deltas only)"
        )
    full = sorted(
        n for n in tensor_names if not any(f in n for f in LORA_FACTORS) and "lora_magnitude" not in n
    )
    if config.get("trainable_token_indices") or full:
        shown = ", ".join(full[:3]) + (f" and {len(full) - 3} more" if len(full) > 3 else "")
        problems.append(
            "added tokens / resized embeddings are not supported"
            + (f" (full tensors {shown})" if full else " (trainable_token_indices)")
            + ": vLLM serves every adapter of a server with the base model's one vocabulary"
        )
    if config.get("lora_bias"):
        problems.append("lora_bias is not supported: vLLM does not apply trained LoRA biases")
    if problems:
        raise InvalidAdapterError(f"{folder}: {'; '.join(problems)}; {WHAT_TO_DO}")
