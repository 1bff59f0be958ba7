"""OpenAI wire schemas for the routes we serve: requests (validated) and response bodies (built).

Every request field that reaches the engine or SQLite is bounded here, so an odd value (a huge
integer, NaN, a megabyte string) is a 400 naming the field, never a 5xx.

No request field is silently dropped: each OpenAI field is honoured, or refused with a 400 that
names it and says why (`refused`: audio, ...; `tools` where the server has no tool calling), or on
the short list of fields that change
nothing about a completion here (`IGNORED_FIELDS`). A field OpenAI does not define is a 400 naming
it, except vLLM's `structured_outputs` extra, which is honoured.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic_core import PydanticCustomError

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
"""A seed is a signed 64-bit integer (what the engines' random generators take)."""
COUNT_MAX = 2**31 - 1
"""Token counts and choice counts fit a 32-bit integer; the server's own caps are lower."""

Stop = Annotated[str, Field(min_length=1, max_length=1024)]
_Reference = Annotated[str, Field(max_length=256)]
"""The `model` field: the base model or a registry reference; never longer than this."""


class JsonSchema(BaseModel):
    """`response_format.json_schema`: OpenAI's named schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field("response", max_length=64)
    description: str | None = Field(None, max_length=4096)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    """Always constrained here; `strict: true` also closes every object (`additionalProperties:
    false` where the schema leaves it open), as OpenAI's strict mode requires of a schema."""


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: plain text, any JSON object, or JSON that matches a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra: exactly one of json, regex, choice, grammar, json_object."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[Annotated[str, Field(max_length=1024)]] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None


LogitBias = dict[Annotated[str, Field(max_length=16)], Annotated[float, Field(ge=-100, le=100)]]
"""Token id (as a string, OpenAI's wire form) -> bias."""


IGNORED_FIELDS = (
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
)
"""OpenAI fields accepted and ignored: storage, billing tier, cache and abuse-tracking hints.
`user` is used (A/B stickiness, payload logs), `parallel_tool_calls` with `tools`."""


def refused(why: str, harmless: tuple[Any, ...] = (None,)) -> AfterValidator:
    """An OpenAI field this server does not honour (`Annotated[Any, refused(...)]`): a 400 naming
    it and saying `why`, unless its value is one of `harmless` (the value that asks for nothing,
    e.g. `tool_choice: "none"`)."""

    def check(value: Any) -> Any:
        if value in harmless:
            return value
        raise PydanticCustomError("unsupported_field", why)

    return AfterValidator(check)


_FUNCTIONS = "the deprecated functions/function_call are not supported; use tools/tool_choice"
_Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _Name
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments."""
    strict: bool | None = None
    """Arguments constrained to `parameters` when the function is called by `tool_choice`."""


class Tool(BaseModel):
    """OpenAI's function tool."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _Name


class NamedToolChoice(BaseModel):
    """`tool_choice` naming the one function to call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionName


class FunctionCallIn(BaseModel):
    name: str = Field(max_length=64)
    arguments: str = Field("", max_length=1 << 20)
    """JSON text, as OpenAI sends it."""


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message in the conversation."""

    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a field we do not know is a 400

    model: _Reference
    max_tokens: int | None = Field(None, ge=1, le=COUNT_MAX)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=COUNT_MAX)
    stop: Stop | list[Stop] | None = None
    seed: int | None = Field(None, ge=LONG_MIN, le=LONG_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=512)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: LogitBias | None = Field(None, max_length=1024)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    """vLLM's extra; a request names it or `response_format`, not both."""
    # accepted and ignored (IGNORED_FIELDS)
    store: bool | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = (
        Field(None, max_length=16)
    )
    service_tier: str | None = Field(None, max_length=32)
    prompt_cache_key: str | None = Field(None, max_length=512)
    safety_identifier: str | None = Field(None, max_length=512)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=128)
    """An assistant message's tool calls."""
    tool_call_id: str | None = Field(None, max_length=128)
    """A tool message's answer to this call."""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=COUNT_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=128)
    """Functions the model may call (where the server has tool calling; else a 400 naming it)."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # refused: a 400 naming the field
    functions: Annotated[Any, refused(_FUNCTIONS, (None, []))] = None
    function_call: Annotated[Any, refused(_FUNCTIONS, (None, "none"))] = None
    audio: Annotated[Any, refused("audio output is not supported: this server answers text only")] = None
    modalities: Annotated[Any, refused("only the text modality is supported", (None, ["text"]))] = None
    prediction: Annotated[Any, refused("predicted outputs are not supported by this server")] = None
    web_search_options: Annotated[Any, refused("web search is not supported by this server")] = None
    reasoning_effort: Annotated[
        Any, refused("reasoning effort is not supported: the served models do not reason")
    ] = None
    verbosity: Annotated[Any, refused("verbosity is not supported by this server")] = None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[Annotated[int, Field(ge=0, le=COUNT_MAX)]]
    max_tokens: int | None = Field(16, ge=1, le=COUNT_MAX)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    """Not supported: a request with `echo: true` is refused (400), never silently answered without it."""
    best_of: Annotated[Any, refused("best_of is not supported by this server; use n", (None, 1))] = None
    suffix: Annotated[Any, refused("suffix (insertion) is not supported by this server", (None, ""))] = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    id: str = Field(max_length=128)
    """The completion id (`chatcmpl-...` or `cmpl-...`) the feedback is about."""
    score: float | None = Field(None, ge=0, le=1)
    """From 0 (worst) to 1 (best)."""
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(None, max_length=10_000)


# -- response bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    # logprobs may be -inf; written as JSON's usual `-Infinity`, as before
    model_config = ConfigDict(ser_json_inf_nan="constants")


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Body):
    content: list[TokenLogprobOut]


class TextLogprobs(_Body):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class FunctionCallOut(_Body):
    name: str
    arguments: str


class ToolCallOut(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(_Body):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    """Left out of the JSON unless the model called tools."""

    @model_serializer(mode="wrap")
    def _tool_calls_if_any(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return out


class ChatChoice(_Body):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str


class TextChoice(_Body):
    index: int
    text: str
    logprobs: TextLogprobs | None
    finish_reason: str | None


class ChatCompletion(_Body):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Completion(_Body):
    """A text completion, and (with `finish_reason` None until the end) each of its stream chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ChunkDelta(_Body):
    """What a chat stream chunk adds; fields not set are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """Pieces of tool calls: index, then id, type and function name, then more arguments."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(_Body):
    index: int
    delta: ChunkDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(_Body):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
