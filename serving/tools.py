"""Tool calling: whether this server honours `tools` (a tool parser set with `--tool-parser`, and
a chat template that renders tools), the messages as the template takes them, and the request's
`ToolPlan` (the engine's: its constraint for `tool_choice`, its parser of the output).

Refusals are a 400 naming `tools` (or `tool_choice`) and saying why: no tool parser, a template
that does not render tools, or an engine without tool calling.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from serving.engine.base import ToolPlan
from serving.errors import BadRequestError
from serving.protocol import ChatCompletionRequest, ChatMessage
from serving.state import ServerState
from serving.structured import request_constraint

_PROBE = [{"role": "user", "content": "hi"}]
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "probe_tool_name", "description": "d", "parameters": {"type": "object"}},
}


@functools.lru_cache(maxsize=8)
def _renders_tools(template: str, tokenizer: Any) -> bool:
    if "tools" not in template:
        return False
    try:  # a template may name `tools` and still ignore them: rendering them must change the prompt
        plain = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(
            _PROBE, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that fails on the probe cannot render tools either
        return False
    return bool(plain != with_tools)


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders `tools` into the prompt."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and _renders_tools(template, tokenizer)


def why_no_tools(state: ServerState) -> str | None:
    """Why this server refuses `tools` (None: it honours them)."""
    if state.engine.tool_parser is None:
        return (
            "no tool parser is set for its base model (serve with --tool-parser NAME, one of vLLM's "
            "--tool-call-parser names such as hermes or llama3_json, on --engine vllm)"
        )
    if not template_renders_tools(state.engine.tokenizer):
        return (
            f"the chat template of {state.served_base} does not render tools (serve with "
            "--chat-template FILE, a template that does)"
        )
    return None


def plan(state: ServerState, req: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool plan (None: no tools asked for, or `tool_choice: none`); a 400 naming
    `tools` or `tool_choice` when they cannot be honoured."""
    if not req.tools:
        if req.tool_choice not in (None, "none"):
            raise BadRequestError("tool_choice needs tools: give the functions in tools", param="tool_choice")
        return None
    why = why_no_tools(state)
    if why is not None:
        raise BadRequestError(f"tool calling is not supported by this server: {why}", param="tools")
    if req.tool_choice == "none":
        return None  # the functions are in the prompt; the answer is text
    own = request_constraint(req)
    forced = req.tool_choice not in (None, "auto")
    if own is not None and forced:
        raise BadRequestError(
            f"tool_choice required or named constrains the answer to a tool call: leave {own.param} out",
            param="tool_choice",
        )
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    choice = req.tool_choice.model_dump() if not isinstance(req.tool_choice, str | None) else req.tool_choice
    return state.engine.plan_tools(req.model, tools, choice or "auto", req.parallel_tool_calls, own)


def template_tools(req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The request's functions as chat templates take them (None: none)."""
    return [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None


def template_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates take it: `developer` as `system`; an assistant's tool calls
    with their arguments as objects (what Hermes-style templates render, as vLLM passes them);
    a tool answer with its call id."""
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"messages: a tool call's arguments are not valid JSON ({exc.msg})", param="messages"
        ) from exc
