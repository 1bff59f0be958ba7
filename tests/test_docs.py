"""The documentation: the README stays a front door, the site builds strictly (the performance
page's tables against the result files: tests/loadtests/test_report.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def test_the_readme_is_a_front_door_that_links_into_the_docs() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for command in (
        "make demo",
        "make test",
        "platform train",
        "platform serve",
        "from openai import OpenAI",
    ):
        assert command in text
    for command in ("platform ab start", "platform rollout start", "platform review create"):
        assert command in text
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"README links to a missing page: {link}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)  # !!python/name tags

    def entries(nav: list[object]) -> list[str]:
        out = []
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                out += entries(value) if isinstance(value, list) else [str(value)]
        return out

    nav = entries(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert "vllm-cpu-patches.md" in nav and "design-notes.md" in nav


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, unknown anchors, pages missing from the nav and warnings fail the build.
    `python -m mkdocs` from the root, so the CLI reference imports this checkout's `cli`."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("rollout", "review", "registry", "--max-cpu-loras", "--candidate"):
        assert command in cli, f"the generated CLI reference lacks {command}"
    config = (site / "reference" / "config" / "index.html").read_text()
    for field in ("lora.r", "training.lr", "LORA_PLATFORM_MAX_LORAS", "lora_slot_turn_s", "LoRA rank."):
        assert field in config, f"the generated config reference lacks {field}"
    assert (site / "results" / "bench_many.png").is_file()


@pytest.mark.parametrize("page", ["performance.md", "design-notes.md", "security.md", "architecture.md"])
def test_pages_moved_out_of_the_readme_keep_their_content(page: str) -> None:
    text = (DOCS / page).read_text()
    expected = {
        "performance.md": "tokens streamed inside each window",
        "design-notes.md": "Preempting for a slot was tried and reverted",
        "security.md": "| check | figure measured | result |",
        "architecture.md": "flowchart",
    }[page]
    assert expected in text
