"""`platform eval REF --lm-eval TASKS`: lm-evaluation-harness on a version, offline, through the session's
real `platform serve` and in this process, recorded with the version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.card import with_records
from registry.store import Registry
from tests.serving.fixtures import Server
from trainer.lm_harness import run_lm_eval

ROWS = [
    {"question": "my order has not arrived", "answer": "ok"},
    {"question": "the invoice shows the wrong amount", "answer": "please check the invoice"},
    {"question": "how do I reset my password", "answer": "reset"},
    {"question": "the app crashes at start", "answer": "the app"},
]


def write_task(folder: Path) -> Path:
    """A generate_until task read from a local JSONL file (no Hub): greedy, stops at a newline."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "support_local.yaml").write_text(
        f"""task: support_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  temperature: 0
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: chrf
    aggregation: chrf
    higher_is_better: true
"""
    )
    return folder


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("lm-eval-tasks"))


def test_a_local_task_scores_the_same_through_the_server_and_in_process(
    server: Server, adapters: tuple[Path, dict[str, str]], tasks_dir: Path
) -> None:
    registry, refs = adapters
    ref = refs["support"]
    served = run_lm_eval(ref, ["support_local"], str(registry), server=server.url, tasks_dir=str(tasks_dir))
    local = run_lm_eval(ref, ["support_local"], str(registry), tasks_dir=str(tasks_dir))
    # greedy on the same weights: the same answers word for word, so the same scores. One
    # difference: when the token budget ends inside a multi-byte character, vLLM's detokenizer
    # withholds the incomplete bytes while transformers decodes them as U+FFFD (the tiny model's
    # answers are byte salad); chrF counts that character, exact match does not care.
    answers = {
        side: [a.rstrip("\ufffd") for a in run.responses["support_local"]]
        for side, run in (("served", served), ("local", local))
    }
    assert len(answers["served"]) == len(ROWS)
    assert answers["served"] == answers["local"]
    assert any(answers["served"]), "the adapter answered nothing"
    assert served.results["support_local"]["exact_match"] == local.results["support_local"]["exact_match"]
    assert served.results["support_local"]["chrf"] == pytest.approx(
        local.results["support_local"]["chrf"], abs=1.0
    )
    assert set(served.results["support_local"]) == {"exact_match", "chrf"}
    assert served.samples == {"support_local": len(ROWS)}


def test_lm_eval_scores_are_recorded_with_the_version_and_its_card(
    server: Server, adapters: tuple[Path, dict[str, str]], tasks_dir: Path
) -> None:
    registry, refs = adapters
    ref = refs["support"]
    args = ["eval", ref, "--lm-eval", "support_local", "--lm-eval-tasks-dir", str(tasks_dir)]
    result = CliRunner().invoke(cli, [*args, "--server", server.url, "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    assert "recorded as evaluation" in result.output and "support_local exact_match" in result.output

    reg = Registry(registry)
    v = reg.get(ref, verify_files=False)
    stored = reg.evaluations().for_version(v.name, v.version)[-1]
    assert stored["kind"] == "lm-eval" and stored["mode"] == f"server {server.url}"
    assert set(stored["results"]["support_local"]) == {"exact_match", "chrf"}
    assert stored["settings"]["tasks_dir_sha256"]
    card = with_records(
        (v.path / "README.md").read_text(), [], [], reg.evaluations().for_version(v.name, v.version)
    )
    assert "## Evaluations" in card and "support_local: exact_match" in card
    shown = CliRunner().invoke(cli, ["registry", "show", ref, "--registry", str(registry)])
    assert "support_local: exact_match" in shown.output


def test_an_unknown_task_is_a_clear_error(adapters: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    registry, refs = adapters
    tasks = write_task(tmp_path / "tasks")
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            refs["support"],
            "--lm-eval",
            "no_such_task",
            "--lm-eval-tasks-dir",
            str(tasks),
            "--registry",
            str(registry),
        ],
    )
    assert result.exit_code == 1
    assert "unknown lm-eval task(s) no_such_task" in result.output
    assert "Traceback" not in result.output


def test_eval_needs_data_general_or_lm_eval_tasks(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", "support@1", "--registry", str(tmp_path / "registry")])
    assert result.exit_code == 2
    assert "--data FILE (held-out rows), --general, --lm-eval TASKS" in result.output
