"""The whole pipeline on the tiny model: data -> train -> eval -> save -> registry -> reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.store import Registry
from tests.trainer.support import bnb_4bit_skip_reason
from trainer.errors import ModelError


def test_run_writes_a_complete_safetensors_run_folder(tiny_run) -> None:  # type: ignore[no-untyped-def]
    result, _ = tiny_run
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"adapter", "config.yaml", "lineage.json", "metrics.json", "train_log.jsonl", "loss.png"} <= files
    names = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]  # safetensors only
    log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    assert (result.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list(result.metrics) == ["base", "prompted", "adapter"]
    for side in result.metrics.values():
        assert {"loss", "perplexity", "exact_match", "rougeL", "bleu", "chrf"} <= set(side)
    # training on the task lowers the held-out loss below the base model's
    assert result.metrics["adapter"]["loss"] < result.metrics["base"]["loss"]


def test_lineage_is_recorded_in_the_registry(tiny_run, tiny_base) -> None:  # type: ignore[no-untyped-def]
    result, registry = tiny_run
    v = Registry(registry).get(result.registry_ref)
    assert v.base_model == "embedded/tiny-llama" and v.base_sha256 == tiny_base.weights_sha256
    lin = v.lineage
    assert lin["dataset"]["sha256"] and lin["dataset"]["splits"]["train"] > 300
    assert lin["config"]["training"]["max_steps"] == 6
    assert {"torch", "transformers", "peft"} <= set(lin["libraries"])
    assert lin["chat_template_sha256"]
    card = (v.path / "README.md").read_text()
    assert "base_model: embedded/tiny-llama" in card and "library_name: peft" in card


def test_reloaded_adapter_gives_the_same_outputs(tiny_run) -> None:  # type: ignore[no-untyped-def]
    from trainer.evaluate_versions import evaluate_refs

    result, registry = tiny_run
    rows = result.run_dir / "predictions.jsonl"
    data = rows.parent / "heldout.jsonl"
    preds = [json.loads(line) for line in rows.read_text().splitlines()]
    data.write_text(
        "".join(json.dumps({"prompt": p["prompt"], "completion": p["reference"]}) + "\n" for p in preds)
    )
    out, _ = evaluate_refs(
        [result.registry_ref, "base"], str(data), str(registry), max_new_tokens=12, max_seq_len=96
    )
    assert out[result.registry_ref].predictions == [p["adapter_prediction"] for p in preds]
    assert out["base"].predictions == [p["base_prediction"] for p in preds]


def test_merged_model_generates_exactly_like_the_adapter(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.loading import attach, resolve_adapters
    from trainer.merge import merge
    from trainer.model import load_base, load_tokenizer

    result, registry = tiny_run
    out = merge(result.registry_ref, tmp_path / "merged", str(registry))
    base, versions = resolve_adapters([result.registry_ref], str(registry))
    tok = load_tokenizer(base)
    peft_model = attach(load_base(base), versions)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Order 12345 arrived damaged"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    a = peft_model.generate(**ids, max_new_tokens=16, do_sample=False)
    b = merged.generate(**ids, max_new_tokens=16, do_sample=False)
    assert a.tolist() == b.tolist()


def test_unknown_target_module_lists_the_models_modules(tiny_base) -> None:  # type: ignore[no-untyped-def]
    from trainer.config import LoraSettings
    from trainer.model import apply_lora, load_base

    with pytest.raises(ModelError) as err:
        apply_lora(load_base(tiny_base), LoraSettings(target_modules=["q_proj", "qkv"]))
    assert "unknown module(s) ['qkv']" in str(err.value)
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in str(err.value)


def test_qlora_trains_a_4bit_base(tmp_path: Path) -> None:
    reason = bnb_4bit_skip_reason()
    if reason:
        pytest.skip(reason)
    import bitsandbytes as bnb
    import torch
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    cfg = Path(__file__).parents[2] / "trainer" / "configs" / "qlora-tiny.yaml"
    recipe = LoRARecipe(load_config(cfg, [f"output_dir={tmp_path}"]), Console(quiet=True))
    recipe.setup()
    # the base under the LoRA is really 4-bit: every linear layer of the blocks (not the LoRA A/B)
    # is a bitsandbytes Linear4bit holding nf4-packed weights, and q/v wrap such a layer
    base = {
        n: m
        for n, m in recipe.model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n and "lora_" not in n
    }
    assert len(base) == 7 * recipe.model.config.num_hidden_layers, sorted(base)
    for name, module in base.items():
        assert isinstance(module, bnb.nn.Linear4bit), f"{name} is {type(module).__name__}, not 4-bit"
        assert isinstance(module.weight, bnb.nn.Params4bit) and module.weight.dtype == torch.uint8, name
        assert module.weight.quant_state.quant_type == "nf4", name
    adapted = {n.rsplit(".", 2)[-2] for n in base if n.endswith(".base_layer")}
    assert adapted == {"q_proj", "v_proj"}
    recipe.train()
    recipe.evaluate()
    result = recipe.save()
    cfg_json = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(cfg_json["target_modules"]) == ["q_proj", "v_proj"]
    assert result.lineage["config"]["lora"]["quantize"] == "nf4"
    assert result.metrics["adapter"]["loss"] > 0


def test_long_rows_are_truncated_from_the_left_and_counted(tmp_path: Path) -> None:
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    recipe = LoRARecipe(
        load_config(
            None,
            ["base_model=tiny", "data.max_seq_len=96", "data.overlong=truncate", f"output_dir={tmp_path}"],
        ),
        Console(quiet=True),
    )
    recipe.setup_data()
    assert recipe.report.truncated > 0 and recipe.report.overlong_dropped == 0
    assert all(len(r.input_ids) <= 96 for r in recipe.train_rows)
    assert recipe.plan.overlong["truncated"] == recipe.report.truncated


def test_offline_comparison_ranks_the_trained_adapter_above_the_base(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from cli.main import cli

    result, registry = tiny_run
    data = tmp_path / "test.jsonl"
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    data.write_text(
        "".join(json.dumps({"prompt": p["prompt"], "completion": p["reference"]}) + "\n" for p in preds)
    )
    out = CliRunner().invoke(
        cli,
        [
            "eval",
            "base",
            result.registry_ref,
            "--data",
            str(data),
            "--max-new-tokens",
            "12",
            "--registry",
            str(registry),
            "--report-dir",
            str(tmp_path / "report"),
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "report" / "comparison.json").read_text())
    rouge = next(c for c in report["comparisons"] if c["metric"] == "rougeL")
    assert (rouge["ref"], rouge["against"]) == (result.registry_ref, "base")
    assert rouge["difference"] > 0 and rouge["wins"] > rouge["losses"]
    assert rouge["low"] <= rouge["difference"] <= rouge["high"]
    assert report["metrics"][result.registry_ref]["rougeL"] > report["metrics"]["base"]["rougeL"]
    assert (tmp_path / "report" / "comparison.md").read_text().startswith("# Offline comparison")
    assert (tmp_path / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_resume_and_early_stopping(tmp_path: Path) -> None:
    from rich.console import Console

    from trainer.config import load_config
    from trainer.errors import TrainerError
    from trainer.recipe import run

    common = [
        "base_model=embedded/tiny-llama",
        "name=ck",
        f"output_dir={tmp_path}",
        "eval.max_examples=2",
        "eval.max_new_tokens=2",
        "eval.compare_base=false",
        "data.max_seq_len=128",
        "training.batch_size=4",
    ]
    first = run(
        load_config(None, [*common, "training.max_steps=4", "training.save_every=2"]), Console(quiet=True)
    )
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    resumed = run(
        load_config(None, [*common, "training.max_steps=6", "training.resume=last"]), Console(quiet=True)
    )
    steps = [
        json.loads(line)["step"]
        for line in (resumed.run_dir / "train_log.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [5, 6]  # picked up after step 4
    with pytest.raises(TrainerError, match="not a checkpoint folder"):
        run(load_config(None, [*common, f"training.resume={tmp_path}"]), Console(quiet=True))
    stopped = run(
        load_config(
            None,
            [
                *common,
                "training.max_steps=40",
                "training.lr=0.5",
                "training.eval_every=1",
                "training.early_stopping_patience=1",
                "name=es",
            ],
        ),
        Console(quiet=True),
    )
    assert stopped.lineage["training"]["steps"] < 40  # validation loss stopped improving


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    from trainer.recipe import new_run_dir

    first, second = new_run_dir(tmp_path, "r-20260101-000000"), new_run_dir(tmp_path, "r-20260101-000000")
    assert first != second and first.is_dir() and second.name == "r-20260101-000000-2"
