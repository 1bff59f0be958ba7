"""Configs: every shipped YAML loads; overrides apply; all problems are reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.support import bnb_4bit_skip_reason
from trainer.config import load_config
from trainer.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[2] / "trainer" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path: Path) -> None:
    config = load_config(path)
    assert config.name
    assert f"platform train --config trainer/configs/{path.name}" in path.read_text()


def test_overrides_are_typed() -> None:
    c = load_config(
        None, ["lora.r=8", "training.lr=5e-4", "lora.target_modules=q_proj,v_proj", "data.packing=true"]
    )
    assert (c.lora.r, c.training.lr, c.lora.target_modules, c.data.packing) == (
        8,
        5e-4,
        ["q_proj", "v_proj"],
        True,
    )


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  r: 0\n  dropout: 2\ntraining:\n  lr: 5\n  dtype: fp8\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, ["training.bogus=1", "nokey"])
    text = str(err.value)
    assert str(cfg) in text
    assert "training.bogus: unknown field 'bogus'" in text
    assert "override 'nokey': expected key=value" in text
    with pytest.raises(ConfigError) as err2:
        load_config(cfg)
    problems = err2.value.problems
    assert any("lora.r" in p for p in problems) and any("lora.dropout" in p for p in problems)
    assert any("training.lr" in p for p in problems) and any("training.dtype" in p for p in problems)


def test_a_response_format_is_read_and_checked_at_load(tmp_path: Path) -> None:
    shipped = load_config(None, ["name=contact", "response_format=sample:contact-json"])
    rf = shipped.read_response_format()
    assert rf is not None and rf["json_schema"]["name"] == "contact" and rf["json_schema"]["strict"]
    assert rf["json_schema"]["schema"]["required"] == ["name", "city", "intent"]
    bad = tmp_path / "schema.json"
    bad.write_text('{"type": "object",\n "properties": {"a": {"type": "strang"}}}')
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object",\n "properties": }')
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"response_format={bad}"])
    assert f"response_format: {bad}: not a valid JSON schema at properties/a/type" in str(err.value)
    with pytest.raises(ConfigError, match=rf"response_format: {broken}: line 2, column 16"):
        load_config(None, [f"response_format={broken}"])
    with pytest.raises(ConfigError, match="no shipped schema for 'sample:support-tickets'"):
        load_config(None, ["response_format=sample:support-tickets"])


def test_wrong_types_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"training.max_steps: expected int, got 'many'"):
        load_config(None, ["training.max_steps=many"])


def test_values_are_validated_by_their_declared_type() -> None:
    c = load_config(
        None,
        ["training.report_to=tensorboard", "lora.quantize=null", "training.lr=5e-4", "name=123"],
    )
    assert (c.training.report_to, c.lora.quantize, c.training.lr, c.name) == (
        ["tensorboard"],
        None,
        5e-4,
        "123",
    )
    assert load_config(None, ["lora.target_modules=all-linear"]).lora.target_modules == "all-linear"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.max_steps=true", "data.packing=maybe", "name=null", "lora.r=2.5"])
    assert [p.split(":")[0] for p in err.value.problems] == [
        "training.max_steps",
        "data.packing",
        "name",
        "lora.r",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_trains_a_step_on_the_tiny_model(path: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from trainer.recipe import run

    overrides = [
        "base_model=tiny",
        f"output_dir={tmp_path}",
        "training.max_steps=2",
        "training.eval_every=1",
        "training.metric_examples=2",
        "eval.max_examples=1",
        "eval.max_new_tokens=2",
        "eval.compare_base=false",
    ]
    config = load_config(path, overrides)
    if config.lora.quantize:
        reason = bnb_4bit_skip_reason()
        if reason:
            pytest.skip(reason)
    result = run(config, Console(quiet=True))
    assert result.lineage["training"]["steps"] == 2
    log = (result.run_dir / "train_log.jsonl").read_text()
    metric = {"val_loss": "eval_loss"}.get(config.training.best_metric, f"eval_{config.training.best_metric}")
    assert f'"{metric}"' in log  # evaluated during training by the metric that picks the checkpoint


def test_defaults_fit_real_data_and_max_steps_is_only_an_override() -> None:
    t = load_config(None).training
    assert (t.max_steps, t.epochs, t.lr_scheduler, t.optimizer) == (0, 2.0, "cosine", "adamw_torch")
    assert 1e-4 <= t.lr <= 3e-4 and 0 < t.warmup_ratio < 0.2 and t.max_grad_norm == 1.0
    assert t.eval_every is None and t.keep_best and t.precision == "auto"
    assert load_config(None).data.overlong == "drop"


def test_unknown_scheduler_optimizer_and_overlong_policy_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "training.lr_scheduler=warp",
                "training.optimizer=adam9",
                "data.overlong=cut",
                "training.warmup_ratio=2",
            ],
        )
    text = str(err.value)
    assert "training.lr_scheduler must be one of cosine" in text
    assert "training.optimizer must be one of adamw_torch" in text
    assert "data.overlong must be 'drop', 'truncate' or 'error'" in text
    assert "training.warmup_ratio must be in [0, 1)" in text


def test_rpo_alpha_is_for_dpo_only() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.objective=kto", "training.rpo_alpha=1"])
    assert "training.rpo_alpha must be >= 0 and is for training.objective=dpo" in str(err.value)
    assert load_config(None, ["training.objective=dpo", "training.rpo_alpha=1"]).training.rpo_alpha == 1.0
