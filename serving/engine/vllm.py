"""vLLM engine: `AsyncLLM` in this process (its engine core in a child process), LoRA enabled.

With vllm_tools.py (vLLM's tool parsers) and cpu/ (CPU kernels), the only modules of the project
that import vllm. Prompts go in as token ids rendered by our tokenizer, so both engines see
identical inputs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from registry.basemodels import BaseModel
from serving.engine.base import (
    AdapterHandle,
    Constraint,
    Delta,
    Engine,
    EngineTimes,
    GenParams,
    TokenLogprob,
    ToolPlan,
    load_tokenizer,
)
from serving.engine.cpu import lora_kernel, vllm_tested
from serving.engine.vllm_tools import VLLMTools, structured_outputs
from serving.errors import AdapterLoadError, BadRequestError, EngineDeadError
from serving.settings import ServeSettings

SLOT_AWARE_SCHEDULER = "serving.engine.cpu.lora_admission.SlotAwareScheduler"


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, settings: ServeSettings, base: BaseModel) -> None:
        self.settings = settings
        self.base = base
        self.llm: Any = None
        self._tokenizer: Any = None
        self.tools: VLLMTools | None = None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.settings.kv_cache_gb))))
        reserved = _reserved_cores(self.settings.cpu_reserved_cores)
        if reserved is not None and current_platform.is_cpu():
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
        self._tokenizer = load_tokenizer(self.base.path, self.settings.chat_template)
        if self.settings.tool_parser is not None:
            self.tools = VLLMTools(self.settings.tool_parser, self._tokenizer)
            self.tool_parser = self.settings.tool_parser
        s = self.settings
        dtype = lora_kernel.cpu_dtype(s.dtype) if current_platform.is_cpu() else s.dtype
        slot_aware = current_platform.is_cpu() and vllm_tested()  # an untested vLLM keeps its own
        args = AsyncEngineArgs(
            model=str(self.base.path),
            served_model_name=[s.served_model_name or self.base.id],
            dtype=dtype,
            enable_lora=True,
            max_loras=s.max_loras,
            max_cpu_loras=max(s.max_cpu_loras, s.max_loras),
            max_lora_rank=s.max_lora_rank,
            max_model_len=s.max_model_len or 2048,
            max_num_seqs=s.max_num_seqs,
            kv_cache_memory_bytes=int(s.kv_cache_gb * (1 << 30)),
            enforce_eager=True,
            structured_outputs_config=_structured_outputs_config(),
            seed=0,
            trust_remote_code=False,
            # CPU: slot-aware admission and slot turns (the GPU path keeps vLLM's asynchronous scheduler)
            scheduler_cls=SLOT_AWARE_SCHEDULER if slot_aware else None,
            additional_config={"lora_slot_turn_s": s.lora_slot_turn_s or None} if slot_aware else {},
        )
        self.llm = AsyncLLM.from_engine_args(args)

    async def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        from vllm.lora.request import LoRARequest

        try:
            await self.llm.add_lora(LoRARequest(adapter.name, adapter.lora_id, str(adapter.path)))
        except Exception as exc:  # vLLM raises ValueError/RuntimeError with the reason
            self._raise_if_dead(exc)
            raise AdapterLoadError(f"{adapter.name}: vLLM refused the adapter: {exc}") from exc

    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        await self.llm.remove_lora(adapter.lora_id)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: GenParams, adapter: AdapterHandle | None
    ) -> AsyncGenerator[list[Delta], None]:
        from vllm.exceptions import VLLMClientError
        from vllm.lora.request import LoRARequest

        sp = _sampling_params(params)
        lora = LoRARequest(adapter.name, adapter.lora_id, str(adapter.path)) if adapter else None
        try:
            stream = self.llm.generate({"prompt_token_ids": prompt_ids}, sp, request_id, lora_request=lora)
            async for out in stream:
                deltas = [self._delta(o) for o in out.outputs]
                if out.finished and deltas:
                    deltas[-1].times = _times(out.metrics)
                yield deltas
        except (ValueError, VLLMClientError) as exc:
            raise _bad_request(exc) from exc
        except Exception as exc:
            self._raise_if_dead(exc)
            raise

    def plan_tools(
        self,
        model: str,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        parallel: bool | None,
        constraint: Constraint | None = None,
    ) -> ToolPlan:
        if self.tools is None:
            return super().plan_tools(model, tools, tool_choice, parallel, constraint)
        return self.tools.plan(model, tools, tool_choice, parallel, constraint)

    def check_params(self, params: GenParams) -> None:
        """vLLM's own request checks (the ones `add_request` makes), before the request is answered:
        a schema, regex or grammar the structured-output backend cannot compile, a logit_bias token
        out of the vocabulary."""
        if params.constraint is None and not params.logit_bias:
            return
        from vllm.exceptions import VLLMClientError

        p = self.llm.input_processor
        try:
            sp = _sampling_params(params)
            sp.verify(p.model_config, p.speculative_config, p.structured_outputs_config, p.tokenizer)
        except (ValueError, VLLMClientError) as exc:
            blame = None if params.constraint is None else params.constraint.param
            raise _bad_request(exc, blame) from exc

    def _delta(self, o: Any) -> Delta:
        logprobs = None
        if o.logprobs is not None:
            logprobs = []
            for token_id, step in zip(o.token_ids, o.logprobs, strict=False):
                chosen = step.get(token_id)
                top = sorted(step.items(), key=lambda kv: kv[1].rank or 0)
                logprobs.append(
                    TokenLogprob(
                        token=self._token_text(token_id, chosen),
                        logprob=float(chosen.logprob) if chosen else float("-inf"),
                        top=[(self._token_text(t, lp), float(lp.logprob)) for t, lp in top],
                    )
                )
        return Delta(o.index, o.text, list(o.token_ids), o.finish_reason, logprobs)

    def _token_text(self, token_id: int, lp: Any) -> str:
        if lp is not None and lp.decoded_token is not None:
            return str(lp.decoded_token)
        return str(self._tokenizer.decode([token_id]))

    async def check_health(self) -> None:
        if self.llm is None or self.llm.errored:
            raise EngineDeadError("the vLLM engine is not running")
        try:
            await self.llm.check_health()
        except Exception as exc:
            raise EngineDeadError(f"the vLLM engine is dead: {exc}") from exc

    def _raise_if_dead(self, exc: Exception) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMDead

        if isinstance(exc, VLLMDead) or (self.llm is not None and self.llm.errored):
            raise EngineDeadError(f"the vLLM engine died: {exc}") from exc

    def running(self) -> int:
        """Requests vLLM has not finished (aborted ones leave at once)."""
        if self.llm is None:
            return 0
        return int(self.llm.get_num_unfinished_requests())


def _reserved_cores(setting: int | None) -> int | None:
    """Cores vLLM's CPU worker leaves to its engine core; None: vLLM's default (1 on x86).

    On 2 CPUs vLLM's default pins the model to one OpenMP thread; the engine core's wait on the
    worker mostly yields, so both cores on the model were faster (README, performance)."""
    if setting is not None:
        return setting
    return 0 if len(os.sched_getaffinity(0)) <= 2 else None


def _structured_outputs_config() -> Any:
    """xgrammar (the backend the registry checks schemas with: no silent fallback to another
    backend's dialect), and compact JSON: with whitespace allowed between JSON tokens, small
    fine-tuned models loop on whitespace until max_tokens (seen on the tiny model)."""
    from vllm.config import StructuredOutputsConfig

    return StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)


def _sampling_params(params: GenParams) -> Any:
    """vLLM's SamplingParams for our GenParams (deltas out: the server streams them)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        seed=params.seed,
        logprobs=params.logprobs,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        structured_outputs=structured_outputs(params.constraint),
        logit_bias=dict(params.logit_bias) or None,
        skip_special_tokens=params.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
    )


def _bad_request(exc: Exception, blame: str | None = None) -> BadRequestError:
    """A request vLLM refuses, as our 400 naming the field: vLLM's own `parameter` when it names
    one, else `blame` (its structured-output checks name none)."""
    param = getattr(exc, "parameter", None) or blame
    message = str(exc) if param is None or str(param) in str(exc) else f"{param}: {exc}"
    return BadRequestError(message, param=None if param is None else str(param))


def _times(stats: Any) -> EngineTimes | None:
    """vLLM's request stats (RequestOutput.metrics: engine-core time.monotonic() stamps)."""
    if stats is None or not (0 < stats.queued_ts <= stats.scheduled_ts <= stats.first_token_ts):
        return None
    return EngineTimes(stats.queued_ts, stats.scheduled_ts, stats.first_token_ts, stats.last_token_ts)
