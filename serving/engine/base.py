"""The engine interface the server talks to. Routes never see vLLM or transformers."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.errors import BadRequestError


@dataclass(frozen=True)
class AdapterHandle:
    """A registry version as an engine sees it: a stable integer id, a name and a folder."""

    lora_id: int
    name: str
    """The version reference, e.g. `support@3`."""
    path: Path


@dataclass(frozen=True)
class Constraint:
    """A structured-output constraint on the completion (serving/structured.py builds it)."""

    kind: Literal["json", "json_object", "regex", "choice", "grammar"]
    spec: str | tuple[str, ...] | None = None
    """The JSON schema (as JSON text), the regex, the grammar, or the choices; None for json_object."""
    param: str = "response_format"
    """The request field it came from (named in errors)."""


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the sampled token's logprob and the top k alternatives."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: Constraint | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias in [-100, 100]) pairs, added to the logits before sampling."""


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class EngineTimes:
    """When the engine queued a request, first scheduled it, and produced its first and last
    token (time.monotonic() seconds of this host); for the `queue`/`prefill`/`decode` spans."""

    queued: float
    scheduled: float
    first_token: float
    last_token: float


@dataclass
class Delta:
    """New output of one choice since the previous delta."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    times: EngineTimes | None = None
    """On a finished request's last delta, from engines that know them (vLLM)."""


class Engine(abc.ABC):
    """An inference engine that serves one base model and any number of LoRA adapters."""

    name: str = "engine"

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the base model; raise on failure."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the model and any worker processes."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The base model's (transformers) tokenizer, with its chat template."""

    @abc.abstractmethod
    async def add_adapter(self, adapter: AdapterHandle) -> None:
        """Load an adapter; raise on a bad adapter while the engine keeps serving."""

    @abc.abstractmethod
    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        """Unload an adapter (requests using it must have finished)."""

    @abc.abstractmethod
    def generate(
        self, request_id: str, prompt_ids: list[int], params: GenParams, adapter: AdapterHandle | None
    ) -> AsyncGenerator[list[Delta], None]:
        """Stream deltas for every choice; closing the iterator aborts the request."""

    def check_params(self, params: GenParams) -> None:
        """Raise serving.errors.BadRequestError when this engine cannot honour `params` (checked
        before a request is answered, so a stream never starts with parameters it then refuses).
        Engines without constrained decoding or logit bias refuse them."""
        if params.constraint is not None:
            raise BadRequestError(
                f"{params.constraint.param}: structured outputs are not supported by the {self.name} engine "
                "(serve with --engine vllm)",
                param=params.constraint.param,
            )
        if params.logit_bias:
            raise BadRequestError(
                f"logit_bias is not supported by the {self.name} engine (serve with --engine vllm)",
                param="logit_bias",
            )

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise serving.errors.EngineDeadError when the engine cannot serve."""

    def running(self) -> int:
        """Requests the engine is working on now."""
        return 0
