"""Tool calling on a real vLLM server (tiny model): vLLM's `hermes` parser turns the output into
OpenAI `tool_calls`, whole and streamed; `tool_choice` named/required constrain the output the way
vLLM's own server does; a conversation with tool calls and tool answers renders. Where the server
has no tool parser (tests/serving/test_request_fields.py) or its chat template renders no tools,
`tools` is a 400 that says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.basemodels import EMBEDDED_TINY, resolve_base_model
from serving.engine.base import load_tokenizer
from serving.tools import template_renders_tools
from tests.serving.fixtures import TOOLS_TEMPLATE, Server

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
    "required": ["city"],
    "additionalProperties": False,
}
LOOKUP = {
    "type": "function",
    "function": {"name": "lookup", "description": "Weather of a city", "parameters": CITY, "strict": True},
}
OTHER = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
FORCED_CALL = r'<tool_call>\{"name": "lookup", "arguments": \{"city": "[a-z]{1,8}"\}\}</tool_call>'
"""With `tool_choice` auto, vLLM's parser lets the answer be a call (held to the function's
schema) or text held to the request's own constraint: with this regex as that, and one function,
the random tiny model calls `lookup` either way, so `auto` has a call to parse."""


def _chat(server: Server, **kw: Any) -> httpx.Response:
    body = {"model": EMBEDDED_TINY, "messages": ASK, "max_tokens": 64, "temperature": 0, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def _one_call(choice: dict[str, Any]) -> dict[str, Any]:
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"], calls
    assert calls[0]["function"]["name"] == "lookup"
    args = json.loads(calls[0]["function"]["arguments"])
    jsonschema.validate(args, CITY)
    return args


def test_auto_tool_choice_parses_the_call_whole_and_streamed(tool_server: Server) -> None:
    # parallel_tool_calls false: one call, then the answer ends (the random model would call on)
    once = {"parallel_tool_calls": False, "structured_outputs": {"regex": FORCED_CALL}}
    r = _chat(tool_server, tools=[LOOKUP], **once)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and not choice["message"]["content"], r.text
    args = _one_call(choice)
    stream = tool_server.client().chat.completions.create(
        model=EMBEDDED_TINY,
        messages=ASK,  # type: ignore[arg-type]
        tools=[LOOKUP],  # type: ignore[list-item]
        max_tokens=64,
        temperature=0,
        stream=True,
        extra_body=once,
    )
    names, pieces, finish, content = [], [], None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            names += [tc.function.name] if tc.function and tc.function.name else []
            pieces.append(tc.function.arguments or "" if tc.function else "")
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["lookup"] and finish == "tool_calls" and not content.strip()
    assert json.loads("".join(pieces)) == args  # the streamed arguments add up to the whole answer's


def test_named_tool_choice_constrains_the_arguments_to_the_function_schema(tool_server: Server) -> None:
    completion = tool_server.client().chat.completions.create(
        model=EMBEDDED_TINY,
        messages=ASK,  # type: ignore[arg-type]
        tools=[LOOKUP, OTHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        max_tokens=64,
        temperature=0,
    )
    choice = completion.choices[0].model_dump()
    assert choice["finish_reason"] == "stop"  # OpenAI's finish reason for a named function
    _one_call(choice)
    r = _chat(tool_server, tools=[LOOKUP], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text
    r = _chat(
        tool_server,
        tools=[LOOKUP],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format={"type": "json_object"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text


def test_a_conversation_with_tool_calls_and_answers_renders(tool_server: Server) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"city": "oslo"}'},
    }
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"})
    r = _chat(tool_server, messages=messages, tools=[LOOKUP], tool_choice="none", max_tokens=4)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert "tool_calls" not in r.json()["choices"][0]["message"]
    bad = [
        *ASK,
        {"role": "assistant", "tool_calls": [{**call, "function": {"name": "lookup", "arguments": "{"}}]},
    ]
    r = _chat(tool_server, messages=bad, tools=[LOOKUP])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text


def test_a_template_without_tools_is_detected() -> None:
    path = resolve_base_model("tiny").path
    assert not template_renders_tools(load_tokenizer(path))  # the tiny model's ChatML
    assert template_renders_tools(load_tokenizer(path, str(TOOLS_TEMPLATE)))


@pytest.mark.parametrize(
    ("flags", "flag", "message"),
    [
        (["--tool-parser", "nope"], "--tool-parser", "unknown tool parser 'nope'"),
        (
            ["--engine", "peft", "--tool-parser", "hermes"],
            "--tool-parser",
            "tool calling needs --engine vllm",
        ),
        (["--replicas", "2", "--tool-parser", "hermes"], "--tool-parser", "not supported with --replicas"),
        (["--chat-template", "BAD"], "--chat-template", "line 2: not a valid Jinja template"),
    ],
)
def test_a_bad_tool_setting_stops_the_server_before_it_starts(
    tmp_path: Path, flags: list[str], flag: str, message: str
) -> None:
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ messages }}\n{% if %}")
    args = ["serve", "--base-model", "tiny", "--registry", str(tmp_path / "reg")]
    result = CliRunner().invoke(cli, args + [str(bad) if f == "BAD" else f for f in flags])
    assert result.exit_code == 2 and flag in result.output and message in result.output, result.output
