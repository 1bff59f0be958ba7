"""Reference engine: transformers + peft, every adapter in one multi-adapter PeftModel.

Requests run one at a time in a worker thread, each batch row with its own adapter through
`adapter_names`. It is the correctness reference for the vLLM engine in tests, the fallback
where vLLM is not installed, and the "naive PEFT server" of the benchmark.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any

from registry.basemodels import BaseModel
from serving.engine.base import AdapterHandle, Delta, Engine, GenParams, load_tokenizer
from serving.engine.cpu import lora_kernel
from serving.errors import AdapterLoadError, EngineDeadError
from serving.settings import ServeSettings

BASE_ADAPTER = "__base__"


class PeftEngine(Engine):
    name = "peft"

    def __init__(self, settings: ServeSettings, base: BaseModel) -> None:
        self.settings = settings
        self.base = base
        self.model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._running = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        setting = lora_kernel.cpu_dtype(self.settings.dtype)  # this engine always runs on the CPU
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}[setting]
        self._tokenizer = load_tokenizer(self.base.path, self.settings.chat_template)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.base.path, dtype=dtype)
        self.model.eval()

    async def shutdown(self) -> None:
        self.model = None

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        await asyncio.to_thread(self._add, adapter)

    def _add(self, adapter: AdapterHandle) -> None:
        from peft import PeftModel

        with self._lock:
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(adapter.path), adapter_name=adapter.name)
                else:
                    self.model = PeftModel.from_pretrained(
                        self.model, str(adapter.path), adapter_name=adapter.name
                    )
                self.model.eval()
            except Exception as exc:
                raise AdapterLoadError(f"{adapter.name}: peft could not load the adapter: {exc}") from exc

    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        def _remove() -> None:
            with self._lock:
                if adapter.name in getattr(self.model, "peft_config", {}):
                    self.model.delete_adapter(adapter.name)

        await asyncio.to_thread(_remove)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: GenParams, adapter: AdapterHandle | None
    ) -> AsyncGenerator[list[Delta], None]:
        self._running += 1
        try:
            deltas = await asyncio.to_thread(self._generate, prompt_ids, params, adapter)
        finally:
            self._running -= 1
        yield deltas

    def _generate(
        self, prompt_ids: list[int], params: GenParams, adapter: AdapterHandle | None
    ) -> list[Delta]:
        import torch

        tok = self._tokenizer
        eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int)]
        with self._lock:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            ids = torch.tensor([prompt_ids] * params.n)
            kwargs: dict[str, Any] = {}
            if hasattr(self.model, "peft_config"):
                kwargs["adapter_names"] = [adapter.name if adapter else BASE_ADAPTER] * params.n
            sample = params.temperature > 0
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=params.max_tokens,
                    do_sample=sample,
                    temperature=params.temperature if sample else None,
                    top_p=params.top_p if sample else None,
                    top_k=0 if sample else None,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                    **kwargs,
                )
        deltas = []
        for i, row in enumerate(out[:, len(prompt_ids) :].tolist()):
            finish = "length"
            if any(t in eos for t in row):
                row = row[: min(row.index(t) for t in eos if t in row)]
                finish = "stop"
            text = tok.decode(row, skip_special_tokens=True)
            for s in params.stop:
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
            deltas.append(Delta(i, text, row, finish))
        return deltas

    async def check_health(self) -> None:
        if self.model is None:
            raise EngineDeadError("the PEFT engine has no model loaded")

    def running(self) -> int:
        return self._running
