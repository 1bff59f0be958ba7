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


def test_the_forgetting_table_says_whether_mixing_met_the_target() -> None:
    from loadtests.report import forgetting

    def model(ref: str, em: float, vs: list[float] | None) -> dict[str, object]:
        out: dict[str, object] = {"ref": ref, "exact_match": em, "rougeL": em, "examples": []}
        return out | ({"vs_unmixed_exact_match": vs} if vs else {})

    figures = {
        "task": {
            "rows": 50,
            "models": {
                "base": model("base", 0.0, [-1.0, -1.0, -1.0]),
                "few_shot": model("base+few_shot", 0.2, [-0.8, -0.9, -0.7]),
                "unmixed": model("support@1", 1.0, None),
                "mixed": model("support@2", 0.99, [-0.01, -0.03, 0.0]),
            },
        },
        "general": {
            "items": 300,
            "models": {
                "base": {"ref": "base", "general": 0.4},
                "unmixed": {"ref": "support@1", "general": 0.3, "drop": [0.1, 0.06, 0.14]},
                "mixed": {"ref": "support@2", "general": 0.37, "drop": [0.03, 0.0, 0.06]},
            },
        },
        "verdict": {"unmixed_forgot": True, "drop_ratio": 0.3, "target_met": True},
        "mix": [
            {"path": "sample:support-tickets", "sampled": 342},
            {"path": "sample:general-train", "sampled": 85},
        ],
        "settings": {"steps": 60, "seed": 42},
    }
    text = forgetting(figures)
    assert (
        "| mixed | support@2 | 0.99 | 0.99 | -0.010 [-0.030, +0.000] | 0.37 | +0.030 [+0.000, +0.060] |"
        in text
    )
    assert "mixed / unmixed: 0.3; target" in text and ": met." in text
    figures["verdict"] = {"unmixed_forgot": False, "drop_ratio": None, "target_met": False}
    assert "not met. The unmixed adapter's drop is within noise" in forgetting(figures)
