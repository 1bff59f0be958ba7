"""A version's default response format: `response_format.json` in its folder.

It holds an OpenAI `response_format` object (`{"type": "json_schema", "json_schema": {"name",
"schema", "strict"}}` or `{"type": "json_object"}`); the server applies it to requests that name
no response format of their own. A version's files never change, so storing a format publishes the
version's weights again as the next version with the file (`with_response_format`): the change is
a new version, moved to production by an alias or a canary rollout like any other.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.store import Registry, Version

RESPONSE_FORMAT = "response_format.json"
_OWN_FILES = {
    "manifest.json",
    "README.md",
    "lineage.json",
    "adapter_model.safetensors",
    "adapter_config.json",
}


def check_json_schema(schema: Any) -> None:
    """RegistryError unless `schema` is a JSON Schema (checked against its meta-schema; jsonschema)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise RegistryError("a JSON schema must be a JSON object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top level)"
        raise RegistryError(f"not a valid JSON schema at {where}: {exc.message}") from exc


def check_compiles(schema: dict[str, Any]) -> None:
    """RegistryError unless xgrammar (vLLM's default structured-output backend) compiles `schema`."""
    try:
        import xgrammar
    except ImportError:  # a registry host without the serving extras: the server checks it again
        return
    try:
        xgrammar.Grammar.from_json_schema(json.dumps(schema))
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
        raise RegistryError(f"the schema cannot be compiled for constrained decoding: {exc}") from exc


def response_format_from(data: Any, name: str) -> dict[str, Any]:
    """An OpenAI response_format from a file's JSON: a response_format object as it is, or a
    plain JSON schema wrapped as `json_schema` (named `name`, strict); checked."""
    if isinstance(data, dict) and data.get("type") in ("json_object", "json_schema", "text"):
        rf = data
    else:
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": data, "strict": True}}
    if rf["type"] == "text":
        raise RegistryError("response_format type 'text' constrains nothing; give a schema or json_object")
    if rf["type"] == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise RegistryError("response_format type json_schema needs json_schema.schema")
        check_json_schema(spec["schema"])
        check_compiles(spec["schema"])
    unknown = sorted(set(rf) - {"type", "json_schema"})
    if unknown:
        raise RegistryError(f"unknown response_format field(s): {', '.join(unknown)}")
    return rf


def read_response_format(path: Path, name: str) -> dict[str, Any]:
    """`response_format_from` a JSON file; errors name the file (and line)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(
            f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read it ({exc})") from exc
    try:
        return response_format_from(data, name)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc.message}") from exc


def stored_response_format(version: Version) -> dict[str, Any] | None:
    """The response format stored with a version, if any."""
    path = version.path / RESPONSE_FORMAT
    return json.loads(path.read_text()) if path.is_file() else None


def with_response_format(registry: Registry, ref: str, rf: dict[str, Any] | None) -> Version:
    """Publish the weights and files of `ref` as the next version of its name, with `rf` as its
    default response format (None: without one). Returns the new version."""
    v = registry.get(ref)
    extra = {p.name: p for p in sorted(v.path.iterdir()) if p.is_file() and p.name not in _OWN_FILES}
    extra.pop(RESPONSE_FORMAT, None)
    lineage = {k: val for k, val in v.lineage.items() if k not in ("name", "version", "parent")}
    lineage["response_format_of"] = v.ref
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if rf is not None:
            extra[RESPONSE_FORMAT] = scratch / RESPONSE_FORMAT
            extra[RESPONSE_FORMAT].write_text(json.dumps(rf, indent=2) + "\n")
        return registry.push(v.name, v.path, lineage, extra_files=extra, parent=v.version)
