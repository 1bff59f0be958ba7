"""Engine deltas -> OpenAI response bodies: one JSON body (`Collected`) or SSE events (`StreamEncoder`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from serving.engine.base import Delta, TokenLogprob
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
    TextChoice,
    TextLogprobs,
    TokenLogprobOut,
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

    def __post_init__(self) -> None:
        self.texts, self.finish, self.logprobs = [""] * self.n, [None] * self.n, [None] * self.n

    def add(self, deltas: list[Delta]) -> None:
        for d in deltas:
            self.texts[d.index] += d.text
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
                choices=[
                    ChatChoice(
                        index=i,
                        message=AssistantMessage(content=self.texts[i]),
                        logprobs=chat_logprobs(self.logprobs[i]),
                        finish_reason=self.finish[i] or "stop",
                    )
                    for i in range(self.n)
                ],
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
        return self._chunk(choices) if choices else None

    def _choice(self, d: Delta) -> ChunkChoice | TextChoice:
        offset = self.offsets[d.index]
        self.offsets[d.index] += len(d.text)
        if self.job.chat:
            delta = ChunkDelta(content=d.text) if d.text else ChunkDelta()
            return ChunkChoice(
                index=d.index, delta=delta, logprobs=chat_logprobs(d.logprobs), finish_reason=d.finish_reason
            )
        return TextChoice(
            index=d.index,
            text=d.text,
            logprobs=text_logprobs(d.logprobs, offset),
            finish_reason=d.finish_reason,
        )

    def usage(self, usage: Usage) -> str | None:
        """The last chunk, with no choices and the usage, when the client asked for it."""
        return self._chunk([], usage) if self.job.include_usage else None
