"""The far side of a remote judge for tests: an OpenAI-compatible `/v1/chat/completions` on
127.0.0.1 (FastAPI + uvicorn) whose verdicts a test scripts, reached through our real HTTP client
(the `openai` package). It records every request."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from testkit.servers import app_in_thread, free_port

_ASKED = re.compile(r"\[answer 1\]\n(.*?)\n\n\[answer 2\]\n(.*?)\n\nRate both answers", re.DOTALL)
_PROMPT = re.compile(r"Conversation:\n(.*?)\n\n\[answer 1\]", re.DOTALL)


@dataclass(frozen=True)
class Asked:
    """One judge request as the far side saw it."""

    conversation: str
    first: str
    second: str
    model: str
    response_format: dict[str, Any] | None
    authorization: str


Decide = Callable[[Asked], str]
"""The reply text for a request."""


@dataclass
class ScriptedJudge:
    url: str
    decide: Decide = field(default=lambda asked: '{"preference": "tie"}')
    asked: list[Asked] = field(default_factory=list)


def _app(judge: ScriptedJudge) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict[str, Any]:
        body = await request.json()
        user = body["messages"][-1]["content"]
        answers, prompt = _ASKED.search(user), _PROMPT.search(user)
        assert answers and prompt, user
        asked = Asked(
            prompt.group(1),
            answers.group(1),
            answers.group(2),
            body["model"],
            body.get("response_format"),
            request.headers.get("authorization", ""),
        )
        judge.asked.append(asked)
        return {
            "id": f"judge-{len(judge.asked)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": judge.decide(asked)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


@contextmanager
def scripted_judge() -> Iterator[ScriptedJudge]:
    port = free_port()
    judge = ScriptedJudge(f"http://127.0.0.1:{port}")
    with app_in_thread(_app(judge), port):
        yield judge
