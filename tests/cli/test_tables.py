"""Every table the CLI prints is readable at 80 columns: no cell cut to `…`, names and numbers whole."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import cli.ab
import cli.registry_cmd
import cli.train
from cli.demo import answers_table
from cli.main import cli as platform
from cli.tables import print_records
from cli.train import metrics_records
from registry.evidence_store import RequestRecord
from registry.routes import set_weights, start_route
from registry.store import Registry
from serving.experiments.evidence import EvidenceWriter

NAMES = ("support-tickets-classifier", "support-tickets-classifier-v2", "contact-json-extractor")
BASES = {"embedded/smollm2-135m-instruct-q4_1": "ab" * 32, "/srv/models/SmolLM2-360M-Instruct": "cd" * 32}


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (cli.ab, cli.registry_cmd, cli.train):
        monkeypatch.setattr(module, "console", Console(width=80))


def run(*args: str) -> str:
    result = CliRunner().invoke(platform, list(args))
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    return result.output


def adapter(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {f"{prefix}.lora_A.weight": torch.ones(4, 8), f"{prefix}.lora_B.weight": torch.ones(8, 4)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    )
    return folder


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "registry")
    folder = adapter(tmp_path / "a")
    for name, (base, sha) in zip(NAMES, [*BASES.items(), *BASES.items()], strict=False):
        metrics = {"adapter": {"exact_match": 0.8125}}
        r.push(name, folder, {"base_model": base, "base_model_sha256": sha, "metrics": metrics})
    r.push(
        NAMES[0],
        folder,
        {"base_model": "embedded/smollm2-135m-instruct-q4_1", "base_model_sha256": "ab" * 32},
    )
    r.set_alias(f"{NAMES[0]}@2", "production")
    return r


def test_registry_list_and_show(reg: Registry) -> None:
    out = run("registry", "list", "--registry", str(reg.root))
    for ref in (f"{NAMES[0]}@1", f"{NAMES[0]}@2", f"{NAMES[1]}@1", f"{NAMES[2]}@1"):
        assert ref in out
    assert "production" in out and "0.812" in out and all(base in out for base in BASES)
    listed = json.loads(run("registry", "list", "--json", "--registry", str(reg.root)))
    assert listed[0]["base_sha256"] in BASES.values() and listed[0]["created"].endswith("+00:00")
    shown = run("registry", "show", f"{NAMES[1]}@1", "--registry", str(reg.root))
    assert "cd" * 32 in shown and str(reg.get(f"{NAMES[1]}@1").path) in shown


def evidence(reg: Registry, variants: list[str]) -> None:
    writer = EvidenceWriter(reg.evidence())
    for k, variant in enumerate(variants):
        for i in range(40):
            rec = RequestRecord(
                f"{variant}-{i}", time.time(), "tickets", variant, f"u{i}", 0.2 + k / 10, 0.05, 10, 12, "ok"
            )
            writer.record(rec)
    writer.close()
    for variant in variants:
        w = EvidenceWriter(reg.evidence())
        for i in range(40):
            w.feedback(f"{variant}-{i}", "tickets", variant, 0.5 + i / 100, int(i % 3 == 0), None)
        w.close()


@pytest.mark.parametrize("count", [2, 3])
def test_ab_report_and_show(reg: Registry, count: int) -> None:
    variants = [f"{NAMES[0]}@1", f"{NAMES[0]}@2", f"{NAMES[2]}@1"][:count]
    start_route(reg, "tickets", [(v, 100 / count) for v in variants])
    set_weights(reg, "tickets", [(v, 10 * (i + 1)) for i, v in enumerate(variants)], None, None)
    evidence(reg, variants)
    out = run("ab", "report", "tickets", "--registry", str(reg.root))
    for v in variants:
        assert v in out
    assert "0.300s" in out and "0.695 [" in out and "verdict" in out
    report = json.loads(run("ab", "report", "tickets", "--json", "--registry", str(reg.root)))
    assert set(report["variants"]) == set(variants)
    assert report["variants"][variants[0]]["score"]["mean"] == pytest.approx(0.695)
    shown = run("ab", "show", "tickets", "--registry", str(reg.root))
    assert all(v in shown for v in variants) and "{" not in shown
    listed = run("ab", "list", "--registry", str(reg.root))
    assert all(v in listed for v in variants)


def render(renderable: object = None, records: tuple[str, list[dict[str, str]]] | None = None) -> str:
    buf = io.StringIO()
    console = Console(width=80, file=buf)
    if records:
        print_records(console, *records)
    else:
        console.print(renderable)
    return buf.getvalue()


def test_eval_and_held_out_tables() -> None:
    scores = {"loss": 1.23456, "perplexity": 3.43721, "exact_match": 0.8125, "rougeL": 0.93333}
    refs = ["base", *(f"{NAMES[1]}@{i}" for i in range(1, 5))]
    out = render(
        records=(
            "evaluation on trainer/samples/support-tickets.jsonl",
            metrics_records(dict.fromkeys(refs, scores)),
        )
    )
    assert "…" not in out and all(r in out for r in refs) and "0.8125" in out and "3.4372" in out
    held_out = render(records=("held-out evaluation", metrics_records({"base": scores, "adapter": scores})))
    assert "…" not in held_out and "+0.0000" in held_out and "perplexity" in held_out


def test_demo_answers_table() -> None:
    rows = [
        {
            "prompt": "my order #123 never arrived " * 3,
            "base": "I'm sorry " * 12,
            "adapter": "Ticket #123 | shipping | late delivery",
        }
    ]
    out = render(answers_table(rows, "embedded/smollm2-135m-instruct-q4_1", f"{NAMES[0]}@12"))
    assert "…" not in out
    assert "embedded/smollm2-135m-instruct-q4_1" in out and f"{NAMES[0]}@12" in out
