"""bf16 training on a CPU with bf16 instructions: the frozen base's matmuls in bf16, the rest in fp32.

`TrainingArguments(bf16=True)` is `torch.autocast`: every frozen weight is cast to bf16 again on every
forward, and attention, the adapters and the logits run in bf16 as well. On an AMX Xeon (SmolLM2-135M,
LoRA r=16 on every linear, 30 steps) that was 1.1-1.16x fp32 for TRL and a plain Trainer, and their
adapters ended 7.5% (support-tickets: 0.783 against 0.729) to 22% (contact-json) above fp32's
validation loss. PyTorch's CPU flash-attention backward is slower in bf16 than in fp32 (9.3 against
2.4 ms a layer here), and the casts took 15% of a step.

Here the frozen `nn.Linear` layers of the base (the LoRA layers' base layers and any other frozen
linear; not the output embeddings, whose logits feed the loss) get a bf16 copy of their weight once, and
inside the block their forward runs `linear(x.bf16(), w_bf16).float()`: the matmul (and its backward
for the input's gradient) on oneDNN's bf16 kernels (AMX or AVX512-BF16), with fp32 accumulation. The
residual stream, norms, attention, the adapters, their gradients, the logits and the loss stay in fp32.
The fp32 weights are kept: validation during the run (the model in eval mode) multiplies in fp32, so
its losses equal the final one, and evaluation, generation and saving after training see the model
as loaded.
Measured the same way: within 0.1-0.5% of fp32's validation loss at 1.3x its speed
(docs/performance.md, "Training speed").

No library does this for CPUs (torchao's float8/int8 training targets CUDA; bitsandbytes' 4/8-bit
layers are QLoRA's, with their own quantization error), hence these few lines.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _bf16_forward(self: Any, x: Any) -> Any:
    import torch
    from torch.nn import functional as F

    if not self.training:  # validation inside the run: fp32, the same loss as after the run
        return F.linear(x, self.weight, self.bias)
    return F.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias_bf16).to(x.dtype)


def frozen_linears(model: Any) -> list[Any]:
    """The frozen plain `nn.Linear` layers of `model`, output embeddings excepted."""
    import torch

    output = model.get_output_embeddings()
    return [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and not m.weight.requires_grad and m is not output
    ]


@contextmanager
def bf16_base_matmuls(model: Any) -> Iterator[int]:
    """Inside the block the frozen linears of `model` multiply in bf16 (see the module's text); yields
    how many layers that is. On leaving, the bf16 copies are dropped and the layers are as before."""
    import torch

    layers = frozen_linears(model)
    for layer in layers:
        layer.weight_bf16 = layer.weight.detach().to(torch.bfloat16)
        layer.bias_bf16 = None if layer.bias is None else layer.bias.detach().to(torch.bfloat16)
        layer.forward = types.MethodType(_bf16_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute: nn.Linear.forward again
            del layer.weight_bf16, layer.bias_bf16
