"""The main job on the embedded SmolLM2-135M-Instruct: a bare `platform train` must visibly work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.mark.slow
def test_default_train_beats_the_base_model_by_30_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    reg = tmp_path / "registry"
    result = CliRunner().invoke(cli, ["train", "--registry", str(reg)])
    assert result.exit_code == 0, result.output
    assert "registered as support@1" in result.output
    shown = json.loads(
        CliRunner().invoke(cli, ["registry", "show", "support@1", "--json", "--registry", str(reg)]).output
    )
    metrics = shown["lineage"]["metrics"]
    assert shown["base_model"] == "embedded/smollm2-135m-instruct-q4_1"
    assert metrics["adapter"]["exact_match"] - metrics["base"]["exact_match"] >= 0.30
    assert metrics["adapter"]["rougeL"] > metrics["base"]["rougeL"]
