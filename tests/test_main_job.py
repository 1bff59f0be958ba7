"""The main job on the embedded SmolLM2-135M-Instruct: train, then serve and ask, as `make demo` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

SERVE = """
import json, sys
from pathlib import Path
from cli.demo import ask_served
from serving.settings import load_settings

settings = load_settings(None, registry=sys.argv[1], port=0, max_model_len=1024)
rows = ask_served(settings, "support@1", json.loads(sys.argv[3]), Path(sys.argv[2]), max_tokens=32)
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_default_train_then_serve_the_new_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reg = tmp_path / "registry"
    # the sample's config is what `platform demo` trains with (fast settings; the bare defaults are for real data)
    config = Path(__file__).parents[1] / "trainer" / "configs" / "support-tickets.yaml"
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--registry", str(reg)])
    assert result.exit_code == 0, result.output
    assert "registered as support@1" in result.output
    shown = json.loads(
        CliRunner().invoke(cli, ["registry", "show", "support@1", "--json", "--registry", str(reg)]).output
    )
    metrics = shown["lineage"]["metrics"]
    assert shown["base_model"] == "embedded/smollm2-135m-instruct-q4_1"
    assert metrics["adapter"]["exact_match"] - metrics["base"]["exact_match"] >= 0.30
    assert metrics["adapter"]["rougeL"] > metrics["base"]["rougeL"]

    # the same adapter served by vLLM answers held-out prompts the way it was evaluated; served as
    # `platform demo` serves it, in a process of its own: the engine's output goes to the log only
    predictions = [
        json.loads(line) for line in (Path(shown["path"]) / "predictions.jsonl").read_text().splitlines()
    ]
    log = tmp_path / "serve.log"
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(reg), str(log), json.dumps([p["prompt"] for p in predictions[:4]])],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stderr == "" and len(served.stdout.splitlines()) == 1, served.stdout + served.stderr
    assert log.stat().st_size > 0
    rows = json.loads(served.stdout)
    assert all(r["adapter_model"] == "support@1" for r in rows)
    hits = sum(r["adapter"].strip() == p["reference"] for r, p in zip(rows, predictions, strict=False))
    assert hits >= 3, rows
    assert not any(r["base"].strip() == p["reference"] for r, p in zip(rows, predictions, strict=False))
