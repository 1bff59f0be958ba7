"""No silently dropped request field: every OpenAI field is honoured, refused with a 400 naming it,
or on the short list of fields that are harmless to ignore; a field OpenAI does not define is a 400."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from serving.protocol import IGNORED_FIELDS
from tests.serving.fixtures import Server

HI = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


def _post(server: Server, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(server.url + path, json={"model": "support@1", "max_tokens": 2, **body}, timeout=120)


def test_tools_on_a_base_without_tool_calling_are_a_400_naming_tools(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        server.client().chat.completions.create(model="support@1", messages=HI, tools=[TOOL], max_tokens=2)  # type: ignore[arg-type, list-item]
    assert bad.value.body["param"] == "tools" and "tool calling is not supported" in bad.value.body["message"]  # type: ignore[index]
    assert "--tool-parser" in bad.value.body["message"]  # type: ignore[index]  # says how to get it
    r = _post(server, {"messages": HI, "tool_choice": "auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    assert _post(server, {"messages": HI, "tool_choice": "none"}).status_code == 200  # asks for nothing


@pytest.mark.parametrize(
    ("body", "path", "param"),
    [
        ({"messages": HI, "top_k": 5}, "/v1/chat/completions", "top_k"),
        ({"messages": HI, "temprature": 0.5}, "/v1/chat/completions", "temprature"),
        ({"prompt": "hi", "guided_json": {}}, "/v1/completions", "guided_json"),
        ({"prompt": "hi", "best_of": 3}, "/v1/completions", "best_of"),
        ({"prompt": "hi", "suffix": "end"}, "/v1/completions", "suffix"),
        ({"messages": HI, "audio": {"voice": "x"}}, "/v1/chat/completions", "audio"),
        ({"messages": HI, "reasoning_effort": "high"}, "/v1/chat/completions", "reasoning_effort"),
        (
            {"messages": HI, "stream": True, "stream_options": {"include_usage": True, "x": 1}},
            "/v1/chat/completions",
            "stream_options",
        ),
    ],
)
def test_a_field_the_server_would_not_honour_is_a_400_naming_it(
    server: Server, body: dict[str, Any], path: str, param: str
) -> None:
    r = _post(server, body, path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


def test_harmless_fields_are_accepted(server: Server) -> None:
    harmless = {
        "store": True,
        "metadata": {"team": "support"},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "u-1",
        "parallel_tool_calls": True,
        "user": "someone",
    }
    assert set(IGNORED_FIELDS) <= set(harmless)
    r = _post(server, {"messages": HI, **harmless})
    assert r.status_code == 200, r.text
    assert (
        _post(server, {"prompt": "hi", "user": "someone", "best_of": 1}, "/v1/completions").status_code == 200
    )
