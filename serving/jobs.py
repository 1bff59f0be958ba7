"""A request becomes a Job: the prompt rendered to token ids, the sampling parameters checked
against this server's caps. Everything here fails with a 400 before the engine sees anything."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving import tools
from serving.engine.base import GenParams, ToolPlan
from serving.errors import BadRequestError
from serving.protocol import ChatCompletionRequest, CompletionRequest, new_id
from serving.state import ServerState

DEFAULT_MAX_TOKENS = 256
MAX_STOPS = 4

RequestBody = ChatCompletionRequest | CompletionRequest
"""What the completion routes accept."""


@dataclass
class Job:
    """One request, normalized for both endpoints."""

    chat: bool
    model: str
    prompt_ids: list[int]
    params: GenParams
    stream: bool
    include_usage: bool
    id: str
    route: str = ""
    variant: str = ""
    user_hash: str | None = None
    key_hash: str | None = None
    """Keyed hash of the API key the request came with (feedback must come with the same)."""
    extra_headers: dict[str, str] = field(default_factory=dict)
    tools: ToolPlan | None = None
    """How the answer's tool calls are constrained and parsed (chat requests with `tools`)."""


def build_job(state: ServerState, req: RequestBody) -> Job:
    chat = isinstance(req, ChatCompletionRequest)
    if isinstance(req, CompletionRequest) and req.echo:
        raise BadRequestError(
            "echo is not supported by this server; leave it out or set it false", param="echo"
        )
    plan = tools.plan(state, req) if isinstance(req, ChatCompletionRequest) else None
    prompt_ids = render(state, req)
    return Job(
        chat=chat,
        model=req.model,
        prompt_ids=prompt_ids,
        params=_params(state, req, len(prompt_ids), plan),
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        id=new_id("chatcmpl" if chat else "cmpl"),
        tools=plan,
    )


def render(state: ServerState, req: RequestBody) -> list[int]:
    """The prompt's token ids (chat template for chat requests)."""
    if isinstance(req, ChatCompletionRequest):
        ids = _chat_ids(state, req)
        param = "messages"
    else:
        ids = _prompt_ids(state, req.prompt)
        param = "prompt"
    if not ids:
        raise BadRequestError("the prompt is empty", param=param)
    return ids


def _chat_ids(state: ServerState, req: ChatCompletionRequest) -> list[int]:
    messages = [tools.template_message(m) for m in req.messages]
    try:
        ids = state.engine.tokenizer.apply_chat_template(
            messages, tools=tools.template_tools(req), add_generation_prompt=True, tokenize=True
        )
    except Exception as exc:  # jinja template errors (roles the template refuses), unencodable text
        raise BadRequestError(
            f"the chat template could not render these messages: {exc}", param="messages"
        ) from exc
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _prompt_ids(state: ServerState, prompt: str | list[str] | list[int]) -> list[int]:
    tok = state.engine.tokenizer
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        vocab = len(tok)
        if any(not 0 <= int(t) < vocab for t in prompt):
            raise BadRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return [int(t) for t in prompt]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequestError(
            "prompt must be a string, a list with one string, or a list of token ids", param="prompt"
        )
    try:
        return list(tok(prompt)["input_ids"])
    except Exception as exc:  # text the tokenizer cannot encode (e.g. lone surrogates)
        raise BadRequestError(
            f"the prompt could not be tokenized ({type(exc).__name__})", param="prompt"
        ) from exc


def _params(state: ServerState, req: RequestBody, prompt_len: int, plan: ToolPlan | None) -> GenParams:
    if req.n > state.settings.max_n:
        raise BadRequestError(f"n={req.n} exceeds this server's cap of {state.settings.max_n}", param="n")
    stops = req.stop_list()
    if len(stops) > MAX_STOPS:
        raise BadRequestError(f"at most {MAX_STOPS} stop sequences", param="stop")
    if isinstance(req, ChatCompletionRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    return GenParams(
        max_tokens=_max_tokens(state, req, prompt_len),
        temperature=req.temperature,
        top_p=req.top_p,
        n=req.n,
        stop=tuple(stops),
        seed=req.seed,
        logprobs=logprobs,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        skip_special_tokens=plan is None or plan.skip_special_tokens,
    )


def _max_tokens(state: ServerState, req: RequestBody, prompt_len: int) -> int:
    s = state.settings
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if asked is not None and asked > s.max_tokens_cap:
        raise BadRequestError(
            f"max_tokens {asked} exceeds this server's cap of {s.max_tokens_cap}", param="max_tokens"
        )
    assert s.max_model_len is not None  # resolved at start-up
    room = s.max_model_len - prompt_len
    if room <= 0 or (asked is not None and asked > room):
        raise BadRequestError(
            f"This model's maximum context length is {s.max_model_len} tokens. However, you requested "
            f"{prompt_len + (asked or 0)} tokens ({prompt_len} in the prompt, {asked or 0} for the completion). "
            "Please reduce the prompt or max_tokens.",
            param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )
    return asked if asked is not None else min(DEFAULT_MAX_TOKENS, room, s.max_tokens_cap)
