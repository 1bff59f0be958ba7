"""`platform registry schema REF FILE`: a version's default response format, published as the next
version with the same weights; bad files are refused naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.response_format import RESPONSE_FORMAT
from registry.store import Registry

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture
def registry(tmp_path: Path, tiny_base: Any) -> Path:
    from testkit.adapters import make_adapters

    folder = make_adapters(tiny_base.path, 1, 4, tmp_path / "peft", ["q_proj"])[0]
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    Registry(tmp_path / "reg").push("contact", folder, lineage)
    return tmp_path / "reg"


def run(registry: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["registry", "schema", *args, "--registry", str(registry)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_a_schema_file_publishes_the_weights_again_with_it(registry: Path, tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    code, out = run(registry, "contact@1", str(tmp_path / "s.json"))
    assert code == 0 and "contact@2" in out, out
    reg = Registry(registry)
    v1, v2 = reg.get("contact@1"), reg.get("contact@2")  # both verify against their manifests
    assert v2.parent == 1 and v2.lineage["response_format_of"] == "contact@1"
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (v1.path / f).read_bytes() == (v2.path / f).read_bytes()
    stored = json.loads((v2.path / RESPONSE_FORMAT).read_text())
    assert stored == {
        "type": "json_schema",
        "json_schema": {"name": "contact", "schema": SCHEMA, "strict": True},
    }
    assert not (v1.path / RESPONSE_FORMAT).exists()  # versions never change
    code, out = run(registry, "contact@2")
    assert code == 0 and json.loads(out) == stored
    code, out = run(registry, "contact@2", "--remove")
    assert code == 0 and not (reg.get("contact@3").path / RESPONSE_FORMAT).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"type": "object",\n "properties": {', "line 2"),
        (json.dumps({"type": "objekt"}), "not a valid JSON schema"),
        (json.dumps({"type": "text"}), "constrains nothing"),
        (json.dumps({"type": "string", "pattern": "(unclosed"}), "is not a 'regex'"),
        (json.dumps({"properties": {"a": {"$ref": "#/$defs/nope"}}}), "cannot be compiled"),
    ],
)
def test_a_bad_file_is_refused_naming_it(registry: Path, tmp_path: Path, content: str, expected: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, out = run(registry, "contact@1", str(bad))
    assert code == 2 and expected in out and "bad.json" in out, out
    assert [v.ref for v in Registry(registry).list_versions()] == ["contact@1"]
