"""Benchmark results: one schema, one file per benchmark, one percentile, no path hacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loadtests import bench_load_stall, bench_ray, bench_registry
from loadtests.record import FIELDS, RESULTS, cpu_label, read_result, write_result
from serving.experiments.stats import percentile

ROOT = Path(__file__).parents[2]


def test_a_result_says_where_it_came_from(tmp_path: Path) -> None:
    path = write_result("bench_x", {"tok_s": 1.5}, tmp_path, argv=["loadtests/bench_x.py", "--users", "4"])
    result = read_result(path)
    assert tuple(result) == FIELDS and result["figures"] == {"tok_s": 1.5}
    assert result["command"].endswith("--users 4")
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", result["commit"])
    assert set(result["machine"]["flags"]) == {"amx", "avx512_bf16", "avx2"}
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert "torch" in result["packages"] and "lora-platform" in result["packages"]
    assert "cores)" in cpu_label(result["machine"])


def test_a_file_off_the_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bench_y.json").write_text(json.dumps({"machine": "2 cores", "figures": {}}))
    with pytest.raises(ValueError, match=r"bench_y\.json: keys must be"):
        read_result(tmp_path / "bench_y.json")


def test_results_hold_one_file_per_benchmark_in_the_schema() -> None:
    files = sorted(RESULTS.glob("*.json"))
    assert files, "no results"
    for path in files:
        read_result(path)
    stems = [p.stem for p in files]
    assert not [s for s in stems if re.search(r"_(\d+|final|window|v\d+)$", s)], stems


@pytest.mark.parametrize("module", [bench_ray, bench_registry])
def test_every_benchmark_takes_percentiles_as_the_ab_statistics_do(module: object) -> None:
    # [1, 2, 3, 4]: interpolated p50 2.5 (nearest-rank copies said 2 or 3), p99 3.97
    values = [0.001, 0.002, 0.003, 0.004]
    for q in (50, 99):
        got = module.pct(values, q)  # type: ignore[attr-defined]
        want = percentile(values, q)
        assert want is not None
        assert got == pytest.approx(want * 1000 if module is bench_ray else want, abs=0.05)


def test_load_stall_percentiles_are_the_shared_ones() -> None:
    streams = [
        bench_load_stall.Stream(start=0.0, end=t / 1000, tokens=2, chunks=[0.0, t / 1000])
        for t in (1.0, 2.0, 3.0, 4.0)
    ]
    assert bench_load_stall.stats(streams)["TPOT"]["p50_ms"] == 2.5


def test_no_module_edits_sys_path_and_tests_and_loadtests_import_only_testkit() -> None:
    edits, crossed = [], []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "build", "runs") or "site-packages" in rel.parts:
            continue
        text = path.read_text()
        if re.search(r"sys\.path\.(insert|append)|sys\.path \+?=", text) and rel != Path(
            __file__
        ).relative_to(ROOT):
            edits.append(str(rel))
        if rel.parts[0] == "loadtests" and re.search(r"^\s*(from|import) tests\b", text, re.M):
            crossed.append(str(rel))
        outside = rel.parts[0] == "tests" and rel.parts[:2] != ("tests", "loadtests")
        if outside and re.search(r"^\s*(from|import) loadtests\b", text, re.M):
            crossed.append(str(rel))
    assert edits == [] and crossed == []
