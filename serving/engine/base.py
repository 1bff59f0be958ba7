"""The engine interface the server talks to. Routes never see vLLM or transformers."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Callable
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

    kind: Literal["json", "json_object", "regex", "choice", "grammar", "structural_tag"]
    spec: str | tuple[str, ...] | None = None
    """The JSON schema (as JSON text), the regex, the grammar, the choices, or the structural tag
    (JSON text; what a tool parser sets for `tool_choice` required/named); None for json_object."""
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
    skip_special_tokens: bool = True
    """Whether special tokens are left out of the text (tool parsers may need them kept)."""


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


@dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: the function's name and its arguments (JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: its index in the message, then its id and name (first
    piece) and more of its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ToolCallParser(abc.ABC):
    """One choice's output parsed into text and tool calls (stateful while streaming)."""

    @abc.abstractmethod
    def parse(self, text: str, token_ids: list[int]) -> tuple[str | None, list[ToolCall]]:
        """The whole output: the content left (None: none) and the tool calls."""

    @abc.abstractmethod
    def parse_delta(
        self, text: str, token_ids: list[int], finished: bool
    ) -> tuple[str | None, list[ToolCallDelta]] | None:
        """The next piece of output: content and tool-call pieces to send (None: nothing yet)."""


@dataclass(frozen=True)
class ToolPlan:
    """How an engine answers one request with `tools`: the constraint on its output (what the tool
    parser sets for `tool_choice`, combined with the request's own; None: none), and a parser per
    choice."""

    constraint: Constraint | None
    named: bool
    """`tool_choice` names a function: OpenAI's finish reason is then `stop`, not `tool_calls`."""
    skip_special_tokens: bool
    parser: Callable[[list[int]], ToolCallParser]
    """A new parser for one choice, given the prompt's token ids."""


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

    tool_parser: str | None = None
    """The tool-call parser this engine parses outputs with (None: tool calling is off)."""

    def plan_tools(
        self,
        model: str,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        parallel: bool | None,
        constraint: Constraint | None = None,
    ) -> ToolPlan:
        """How to answer a request with `tools` and the request's own `constraint` (with
        `tool_choice` auto: the answer is a tool call or text that follows it). BadRequestError
        naming the field it refuses; engines without a tool parser refuse tools."""
        raise BadRequestError(
            f"tool calling is not supported by the {self.name} engine (serve with --engine vllm "
            "and --tool-parser NAME)",
            param="tools",
        )

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise serving.errors.EngineDeadError when the engine cannot serve."""

    def running(self) -> int:
        """Requests the engine is working on now."""
        return 0


def load_tokenizer(path: Path, chat_template: str | None = None) -> Any:
    """The base model's transformers tokenizer; `chat_template`: a Jinja file whose template
    replaces the model's own (`platform serve --chat-template`, checked at start-up)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tokenizer.chat_template = Path(chat_template).read_text()
    return tokenizer
