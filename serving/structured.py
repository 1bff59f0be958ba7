"""Structured outputs and logit bias: what a request asks (OpenAI `response_format`, vLLM's
`structured_outputs` extra, `logit_bias`), or its version's default response format, as
`GenParams`, checked by the engine before the request is answered.

A version's default is the `response_format.json` in its folder (`platform registry schema`);
it applies when the request names no `response_format` and no `structured_outputs`, so
`model="contact:prod"` answers schema-valid JSON with no change to the client. A request's own
`response_format` wins, `{"type": "text"}` included (no constraint).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from registry.errors import RegistryError
from registry.response_format import RESPONSE_FORMAT, check_json_schema
from serving.engine.base import Constraint, GenParams, ToolPlan
from serving.errors import AdapterLoadError, BadRequestError
from serving.protocol import ChatCompletionRequest, CompletionRequest, ResponseFormat, StructuredOutputs

if TYPE_CHECKING:
    from serving.adapters import Target
    from serving.state import ServerState

log = logging.getLogger("lora_platform.serving")


def constrain(
    state: ServerState,
    req: ChatCompletionRequest | CompletionRequest,
    params: GenParams,
    target: Target,
    tools: ToolPlan | None = None,
) -> GenParams:
    """`params` with the request's constraint (with `tools`: the tool plan's, which holds it) or
    its version's default (not for a request with `tools`), and logit bias; a 400 naming the field
    when the engine cannot honour them (a schema it cannot compile)."""
    # with tools, the plan's constraint holds the request's own (serving/tools.py)
    constraint = request_constraint(req) if tools is None else tools.constraint
    asks_tools = isinstance(req, ChatCompletionRequest) and bool(req.tools)
    if constraint is None and req.response_format is None and target.adapter is not None and not asks_tools:
        constraint = version_default(target.adapter.path, target.served_name)
    bias = logit_bias(req, len(state.engine.tokenizer))
    if constraint is None and not bias:
        return params
    params = dataclasses.replace(params, constraint=constraint, logit_bias=bias)
    state.engine.check_params(params)
    return params


def request_constraint(req: ChatCompletionRequest | CompletionRequest) -> Constraint | None:
    """The constraint a request names (None: none, or `response_format` `text`)."""
    if req.response_format is not None and req.structured_outputs is not None:
        raise BadRequestError(
            "give response_format or structured_outputs, not both", param="structured_outputs"
        )
    if req.structured_outputs is not None:
        return _from_extra(req.structured_outputs)
    if req.response_format is not None:
        return from_response_format(req.response_format, "response_format")
    return None


def from_response_format(rf: ResponseFormat, param: str) -> Constraint | None:
    if rf.type == "text":
        return None
    if rf.type == "json_object":
        return Constraint("json_object", param=param)
    if rf.json_schema is None:
        raise BadRequestError(
            "response_format type json_schema needs a json_schema object with a schema",
            param=f"{param}.json_schema",
        )
    schema_param = f"{param}.json_schema.schema"
    _check_schema(rf.json_schema.schema_, schema_param)
    schema = closed(rf.json_schema.schema_) if rf.json_schema.strict else rf.json_schema.schema_
    return Constraint("json", json.dumps(schema), param=schema_param)


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_VALUES = ("enum", "const", "default", "examples")


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that leaves it unset
    (OpenAI's strict mode: only the properties the schema names)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: closed(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _VALUES else closed(value)
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _from_extra(so: StructuredOutputs) -> Constraint:
    given = {
        "json": so.json_,
        "regex": so.regex,
        "choice": so.choice,
        "grammar": so.grammar,
        "json_object": so.json_object or None,
    }
    named = [k for k, v in given.items() if v is not None]
    if len(named) != 1:
        raise BadRequestError(
            "structured_outputs takes exactly one of json, regex, choice, grammar, json_object "
            f"(got {', '.join(named) or 'none'})",
            param="structured_outputs",
        )
    kind = named[0]
    param = f"structured_outputs.{kind}"
    value = given[kind]
    spec: str | tuple[str, ...] | None
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"{param} is not valid JSON: {exc}", param=param) from exc
        if not isinstance(value, dict):
            raise BadRequestError(f"{param} must be a JSON schema object", param=param)
        _check_schema(value, param)
        spec = json.dumps(value)
    elif kind == "choice":
        spec = tuple(so.choice or ())
    elif kind == "json_object":
        spec = None
    else:
        spec = str(value)
    return Constraint(kind, spec, param=param)  # type: ignore[arg-type]  # one of the keys above


def _check_schema(schema: dict[str, object], param: str) -> None:
    try:
        check_json_schema(schema)
    except RegistryError as exc:
        raise BadRequestError(f"{param}: {exc.message}", param=param) from exc


@functools.lru_cache(maxsize=512)
def _version_default(path: str) -> ResponseFormat | None:
    file = Path(path) / RESPONSE_FORMAT
    if not file.is_file():
        return None
    return ResponseFormat.model_validate_json(file.read_bytes())


def version_default(folder: Path, served: str) -> Constraint | None:
    """The default constraint stored with a version (its folder never changes: cached by path)."""
    try:
        rf = _version_default(str(folder))
    except (OSError, ValidationError) as exc:  # checked at publish: a damaged folder
        log.warning("%s: unreadable %s: %s", served, RESPONSE_FORMAT, exc)
        raise AdapterLoadError(f"{served}: its stored response format is unreadable") from exc
    return None if rf is None else from_response_format(rf, f"{served} {RESPONSE_FORMAT}")


def logit_bias(req: ChatCompletionRequest | CompletionRequest, vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` ({"token id": bias}) as (id, bias) pairs; ids must be in the vocabulary."""
    if not req.logit_bias:
        return ()
    out = []
    for key, bias in req.logit_bias.items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab:
            raise BadRequestError(
                f"logit_bias key {key!r} is not a token id of this model (0 to {vocab - 1})",
                param="logit_bias",
            )
        out.append((token, float(bias)))
    return tuple(out)
