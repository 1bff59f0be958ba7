"""Where the project may touch vLLM (docs/vllm-cpu-patches.md): its private names only inside the CPU
patch set (serving/engine/cpu/), and vLLM itself only there, in the engine (serving/engine/vllm.py
and its tool calling, serving/engine/vllm_tools.py) and in the resolver plugin
(serving/engine/resolver.py, public names only)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PATCH_SET = ROOT / "serving" / "engine" / "cpu"
ENGINE = ROOT / "serving" / "engine"
IMPORTERS = {ENGINE / "vllm.py", ENGINE / "vllm_tools.py", ENGINE / "resolver.py"}


def vllm_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every vllm module or name `path` imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vllm"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_no_private_vllm_name_outside_the_cpu_patch_set() -> None:
    found = []
    for package in ("serving", "registry", "cli", "trainer"):
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(PATCH_SET):
                continue
            for line, name in vllm_imports(path):
                private = any(part.startswith("_") for part in name.split("."))
                if private or path not in IMPORTERS:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not found, "vLLM reached outside serving/engine/cpu (move it there, or wrap it):\n" + "\n".join(
        found
    )


def test_the_check_sees_the_patch_set_s_private_names() -> None:  # the walk above is not blind
    names = [n for p in PATCH_SET.rglob("*.py") for _, n in vllm_imports(p)]
    assert "vllm._custom_ops" in names or any("._" in n for n in names)
