"""Engine deltas -> OpenAI response bodies: one JSON body (`Collected`) or SSE events (`StreamEncoder`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from serving.engine.base import Delta, TokenLogprob, ToolCall, ToolCallDelta, ToolCallParser
from serving.jobs import Job
from serving.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChunkChoice,
    ChunkDelta,
    Completion,
    FunctionCallOut,
    TextChoice,
    TextLogprobs,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprob,
    Usage,
    now,
)

DONE = "data: [DONE]\n\n"


def chat_logprobs(lps: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if lps is None:
        return None
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.token.encode()),
                top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top],
            )
            for lp in lps
        ]
    )


def text_logprobs(lps: list[TokenLogprob] | None, offset: int) -> TextLogprobs | None:
    if lps is None:
        return None
    offsets = []
    for lp in lps:
        offsets.append(offset)
        offset += len(lp.token)
    return TextLogprobs(
        tokens=[lp.token for lp in lps],
        token_logprobs=[lp.logprob for lp in lps],
        top_logprobs=[dict(lp.top) for lp in lps],
        text_offset=offsets,
    )


@dataclass
class Collected:
    """The choices of a non-streaming job, filled delta by delta."""

    n: int
    texts: list[str] = field(init=False)
    finish: list[str | None] = field(init=False)
    logprobs: list[list[TokenLogprob] | None] = field(init=False)
    token_ids: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.texts, self.finish, self.logprobs = [""] * self.n, [None] * self.n, [None] * self.n
        self.token_ids = [[] for _ in range(self.n)]

    def add(self, deltas: list[Delta]) -> None:
        for d in deltas:
            self.texts[d.index] += d.text
            self.token_ids[d.index] += d.token_ids
            self.finish[d.index] = d.finish_reason or self.finish[d.index]
            if d.logprobs is not None:
                self.logprobs[d.index] = (self.logprobs[d.index] or []) + d.logprobs

    def body(self, job: Job, served: str, usage: Usage) -> ChatCompletion | Completion:
        if job.chat:
            return ChatCompletion(
                id=job.id,
                created=now(),
                model=served,
                usage=usage,
                choices=[self._chat(job, i) for i in range(self.n)],
            )
        return Completion(
            id=job.id,
            created=now(),
            model=served,
            usage=usage,
            choices=[
                TextChoice(
                    index=i,
                    text=self.texts[i],
                    logprobs=text_logprobs(self.logprobs[i], 0),
                    finish_reason=self.finish[i] or "stop",
                )
                for i in range(self.n)
            ],
        )

    def _chat(self, job: Job, i: int) -> ChatChoice:
        """Choice i; with tools, its output parsed into content and tool calls."""
        finish = self.finish[i] or "stop"
        if job.tools is None:
            message = AssistantMessage(content=self.texts[i])
        else:
            content, calls = job.tools.parser(job.prompt_ids).parse(self.texts[i], self.token_ids[i])
            message = AssistantMessage(content=content, tool_calls=[_tool_call(c) for c in calls] or None)
            finish = tool_finish(finish, bool(calls), job.tools.named)
        return ChatChoice(
            index=i, message=message, logprobs=chat_logprobs(self.logprobs[i]), finish_reason=finish
        )


def tool_finish(finish: str, called: bool, named: bool) -> str:
    """OpenAI's finish reason of a choice that called tools: `tool_calls` (for `tool_choice` auto
    and required), `stop` for a named function, as vLLM's server answers."""
    return "tool_calls" if called and not named and finish == "stop" else finish


def _tool_call(c: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))


def _tool_call_piece(c: ToolCallDelta) -> dict[str, object]:
    """A streamed tool call piece in OpenAI's chunk form (fields not set are left out)."""
    function = {k: v for k, v in (("name", c.name), ("arguments", c.arguments)) if v is not None}
    piece: dict[str, object] = {"index": c.index}
    if c.id is not None:
        piece |= {"id": c.id, "type": "function"}
    return piece | {"function": function}


def event(body: ChatCompletionChunk | Completion, include_usage: bool) -> str:
    """One SSE event; `usage` is in every chunk (null until the last) only when the client asked."""
    return f"data: {body.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"


def error_event(envelope: dict[str, dict[str, str | None]]) -> str:
    return f"data: {json.dumps(envelope)}\n\n"


class StreamEncoder:
    """The SSE events of one streaming job: the chat role chunk, delta chunks, the usage chunk."""

    def __init__(self, job: Job, served: str) -> None:
        self.job, self.served = job, served
        self.created = now()
        self.offsets = [0] * job.params.n
        plan = job.tools
        self.parsers: list[ToolCallParser] | None = (
            None if plan is None else [plan.parser(job.prompt_ids) for _ in range(job.params.n)]
        )
        self.called = [False] * job.params.n

    def _chunk(self, choices: Sequence[ChunkChoice | TextChoice], usage: Usage | None = None) -> str:
        body: ChatCompletionChunk | Completion
        if self.job.chat:
            chat = [c for c in choices if isinstance(c, ChunkChoice)]
            body = ChatCompletionChunk(
                id=self.job.id, created=self.created, model=self.served, choices=chat, usage=usage
            )
        else:
            text = [c for c in choices if isinstance(c, TextChoice)]
            body = Completion(
                id=self.job.id, created=self.created, model=self.served, choices=text, usage=usage
            )
        return event(body, self.job.include_usage)

    def start(self) -> str | None:
        """The chat stream's first chunk (the assistant role); None for text completions."""
        if not self.job.chat:
            return None
        role = ChunkDelta(role="assistant", content="")
        return self._chunk(
            [
                ChunkChoice(index=i, delta=role, logprobs=None, finish_reason=None)
                for i in range(self.job.params.n)
            ]
        )

    def deltas(self, deltas: list[Delta]) -> str | None:
        """One chunk with every delta that carries something; None when none does."""
        choices = [self._choice(d) for d in deltas if d.text or d.finish_reason is not None or d.logprobs]
        sent = [c for c in choices if c is not None]
        return self._chunk(sent) if sent else None

    def _choice(self, d: Delta) -> ChunkChoice | TextChoice | None:
        offset = self.offsets[d.index]
        self.offsets[d.index] += len(d.text)
        if self.job.chat:
            delta: ChunkDelta | None = ChunkDelta(content=d.text) if d.text else ChunkDelta()
            finish = d.finish_reason
            if self.parsers is not None:
                delta, finish = self._tool_delta(d)
            if delta is None:
                return None
            return ChunkChoice(
                index=d.index, delta=delta, logprobs=chat_logprobs(d.logprobs), finish_reason=finish
            )
        return TextChoice(
            index=d.index,
            text=d.text,
            logprobs=text_logprobs(d.logprobs, offset),
            finish_reason=d.finish_reason,
        )

    def _tool_delta(self, d: Delta) -> tuple[ChunkDelta | None, str | None]:
        """A chat delta through its choice's tool parser: content and tool call pieces (None:
        nothing to send yet, the parser holds text that may start a tool call)."""
        assert self.parsers is not None and self.job.tools is not None
        parsed = self.parsers[d.index].parse_delta(d.text, d.token_ids, d.finish_reason is not None)
        content, calls = parsed if parsed is not None else (None, [])
        self.called[d.index] = self.called[d.index] or bool(calls)
        finish = d.finish_reason
        if finish is not None:
            finish = tool_finish(finish, self.called[d.index], self.job.tools.named)
        elif parsed is None and not d.logprobs:
            return None, None
        pieces = [_tool_call_piece(c) for c in calls] or None
        return ChunkDelta(content=content or None, tool_calls=pieces), finish

    def usage(self, usage: Usage) -> str | None:
        """The last chunk, with no choices and the usage, when the client asked for it."""
        return self._chunk([], usage) if self.job.include_usage else None
