"""The docs' performance page says what loadtests/results says: its tables are rendered from the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loadtests.record import RESULTS
from loadtests.report import BLOCK, PAGE, rendered_page


def test_the_performance_page_is_rendered_from_the_result_files() -> None:
    text = PAGE.read_text()
    assert rendered_page(text) == text, "docs/performance.md is out of date: run python -m loadtests.report"
    on_page = {m.group("name") for m in BLOCK.finditer(text)}
    assert on_page == {p.stem for p in RESULTS.glob("*.json")}


def test_a_changed_result_makes_the_performance_page_disagree(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "bench_registry.json"
    data = json.loads(path.read_text())
    data["figures"]["added_per_request_p50_ms"] = 123.45
    path.write_text(json.dumps(data))
    text = PAGE.read_text()
    changed = rendered_page(text, results)
    assert changed != text and "123.5 ms" in changed
