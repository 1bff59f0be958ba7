"""The vLLM CPU patch set: every piece of the project that depends on vLLM's private internals.

Nothing outside this package (and serving/engine/vllm.py, which passes the scheduler below to
vLLM) reaches a private vLLM name. docs/vllm-cpu-patches.md is the long form of this list.

How it runs: `cpu_lora.register` is a `vllm.general_plugins` entry point (pyproject.toml), so
vLLM calls it in every process of the environment (API server, engine core, workers), a user's
own `vllm serve` included. It patches only a vLLM version inside TESTED_VLLM (`vllm_tested`);
on any other version it logs one line and leaves vLLM stock. LORA_PLATFORM_STOCK_CPU_LORA=1
leaves vLLM stock too.

What each module replaces or reads (vLLM 0.32):

- cpu_lora.py, the LoRA ops and punica wrapper (CPU and every platform the plugin runs on):
  - replaces `bgmv_shrink`, `bgmv_expand`, `bgmv_expand_slice`, `sgmv_shrink`, `sgmv_expand`,
    `sgmv_expand_slice` in `vllm.lora.ops.torch_ops`, `vllm.lora.ops.torch_ops.lora_ops` and
    `vllm.lora.punica_wrapper.punica_cpu` (setattr): the stock ops copy a `[tokens, out, r]`
    weight tensor per call and apply the last slot to rows with index -1 (no adapter);
  - replaces `vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU` by a subclass (its
    `update_metadata`, `add_lora_linear`, `add_lora_logits`, `add_lora_embedding`; reads
    `token_lora_indices`, `sampler_indices`): one plan per step, the compiled op of lora_kernel.py;
  - reads `vllm._custom_ops._supports_onednn`, `create_onednn_mm`, `onednn_mm`: vLLM's oneDNN GEMM
    for a batch on one adapter.
- lora_slots.py (CPU only): wraps `LRUCacheWorkerLoRAManager._apply_adapters` (a step's adapters
  keep their slots), `LoRAModelManager.activate_adapter` (layers' `set_lora`/`reset_lora` of
  `BaseLinearLayerWithLoRA` and `MergedColumnParallelLinearWithLoRA` ask the punica wrapper
  first), replaces `LoRAModelRunnerMixin.add_lora` (a load takes no slot; reads the worker
  manager's `_adapter_manager`, `_load_adapter`, `_registered_adapters`, `_active_adapters`;
  uses `vllm.utils.gpu_sync_debug.gpu_sync_allowed`) and memoizes
  `vllm.lora.lora_model.parse_fine_tuned_lora_name`.
- lora_files.py (CPU only): replaces `vllm.lora.lora_model.safetensors` (an adapter file in one
  read) and wraps `LoRAModel.from_local_checkpoint` (reads its `peft_helper`, `dtype`, `device`).
- cpu_norms.py (CPU only): registers an implementation of vLLM's IR ops `rms_norm` and
  `fused_add_rms_norm` (`vllm.ir` `register_impl`, a supported hook) that calls
  `torch.ops._C.rms_norm` / `_C.fused_add_rms_norm`, and wraps the CPU platform's
  `get_default_ir_op_priority` (classmethod replaced) to put it first.
- lora_admission.py (CPU only): `SlotAwareScheduler`, a subclass of
  `vllm.v1.core.sched.scheduler.Scheduler` passed as `scheduler_cls` (a supported hook); it
  overrides `schedule` and reads and edits `running`, `waiting`, `lora_config`, `policy`,
  `max_num_running_reqs`, `vllm_config.additional_config` and requests' `lora_request`,
  `max_tokens`, `num_output_tokens`, `arrival_time`. vllm.py passes it only where `vllm_tested`.
- lora_kernel.py + lora_bf16.c + lora_f32.c (kernel_build.py builds them): the compiled LoRA op,
  bf16 (AMX / AVX512-BF16) and float32 (AVX512F / AVX2+FMA) (no vLLM names; vLLM's stacked weight
  layout `[slots, 1, r, K]` / `[slots, 1, n, r]`).
"""

from __future__ import annotations

import logging

TESTED_VLLM = ">=0.32.0,<0.33"
"""The vLLM versions the patch set was tested with (a PEP 440 specifier); outside it vLLM runs stock."""

log = logging.getLogger("vllm.lora_platform")  # under vLLM's logger: printed with its own lines


def vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def vllm_tested(version: str | None = None) -> bool:
    """True when `version` (default: the installed vLLM's) is inside TESTED_VLLM. A local
    version label (`0.32.0+cpu`) counts as its public version."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        public = Version(version or vllm_version()).public
    except InvalidVersion:
        return False
    return Version(public) in SpecifierSet(TESTED_VLLM)


def refuse_untested() -> bool:
    """Log one line and return True where the installed vLLM is outside TESTED_VLLM."""
    if vllm_tested():
        return False
    log.warning(
        "lora-platform CPU patches off: vLLM %s is outside the tested range %s; vLLM runs stock",
        vllm_version(),
        TESTED_VLLM,
    )
    return True
