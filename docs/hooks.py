"""MkDocs hooks: the configuration reference from the code, and the result plots into the site.

- `<!-- config: trainer.config.TrainConfig -->` in a page becomes a table of that class's fields
  (name, type, default, the field's docstring), read from the source by griffe (the parser behind
  mkdocstrings) so the reference cannot drift from `trainer/config.py` or `serving/settings.py`.
  Nested dataclass fields are expanded (`lora.r`); pydantic-settings classes get their
  environment variable (`env_prefix` + name).
- `loadtests/results/*.png` are served at `results/<name>.png`: the plots stay beside the JSON they
  were drawn from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- config: (?P<path>[\w.]+) -->")


def on_files(files: Files, config: Any) -> Files:
    for png in sorted((ROOT / "loadtests" / "results").glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return MARKER.sub(lambda m: config_table(m.group("path")), markdown)


def load_class(path: str) -> griffe.Class:
    module, name = path.rsplit(".", 1)
    obj = griffe.load(module, search_paths=[str(ROOT)])[name]
    assert isinstance(obj, griffe.Class), path
    return obj


def env_prefix(cls: griffe.Class) -> str | None:
    model_config = cls.members.get("model_config")
    found = re.search(r"env_prefix=['\"]([^'\"]+)", str(getattr(model_config, "value", "")))
    return found.group(1) if found else None


def fields(cls: griffe.Class, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field, nested dataclasses expanded."""
    rows = []
    for name, member in cls.members.items():
        if not isinstance(member, griffe.Attribute) or name.startswith("_") or name == "model_config":
            continue
        annotation = str(member.annotation or "")
        nested = cls.module.members.get(annotation)
        if isinstance(nested, griffe.Class):  # a section of the config (`lora: LoraSettings`)
            rows += fields(nested, f"{prefix}{name}.")
            continue
        doc = " ".join((member.docstring.value if member.docstring else "").split())
        rows.append((prefix + name, annotation, default(member.value), doc))
    return rows


def default(value: Any) -> str:
    text = str(value) if value is not None else ""
    if text.startswith("Field("):  # Field(4, ge=1): the default and the bounds
        text = text.removeprefix("Field(").removesuffix(")")
    if text.startswith("field(default_factory="):
        text = {"list": "[]", "dict": "{}"}.get(text.split("=", 1)[1].rstrip(")"), text)
    return text


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_table(path: str) -> str:
    cls = load_class(path)
    env = env_prefix(cls)
    header = ["field", *(["environment variable"] if env else []), "type", "default", "description"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, annotation, value, doc in fields(cls):
        env_cell = [f"`{env}{name.upper()}`"] if env else []
        row = [
            f"`{name}`",
            *env_cell,
            f"`{cell(annotation)}`",
            f"`{cell(value)}`" if value else "",
            cell(doc),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
