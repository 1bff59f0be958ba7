"""`data.mix`: sources drawn by weight (exact counts, seeded), recorded in the lineage, held-out
metrics reported per source."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.adapter import AdapterInfo
from registry.card import card_text
from trainer.config import load_config
from trainer.data import Example
from trainer.errors import ConfigError
from trainer.mix import prepare_data, sample_counts
from trainer.rowstore import Interleaved

SUPPORT = "sample:support-tickets"


def general_file(path: Path, rows: int = 200) -> Path:
    """General-capability rows (alpaca shape, unlike the support sample): sums with exact answers."""
    lines = [
        json.dumps({"instruction": f"What is {a} plus {a * 7 % 13}?", "output": str(a + a * 7 % 13)})
        for a in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def mix_override(general: Path, support_weight: float = 0.8, general_weight: float = 0.2) -> str:
    return f"data.mix=[{{path: {SUPPORT}, weight: {support_weight}}}, {{path: {general}, weight: {general_weight}}}]"


def origin(example: Example, general: Path) -> str:
    """The source a row was read from, by its own `file:line`."""
    return str(general) if example.source.startswith(f"{general}:") else SUPPORT


def drawn_per_source(
    config_overrides: list[str], general: Path
) -> tuple[Counter[str], dict[str, Any], list[str]]:
    config = load_config(None, config_overrides)
    splits, _, mix = prepare_data(config.data, config.training.seed)
    assert mix is not None
    counts = Counter(origin(ex, general) for ex in splits["train"])
    tests = [origin(ex, general) for ex in splits["test"]]
    assert tests == mix.paths(mix.heldout["test"])  # what the per-source metrics go by
    return counts, {s["path"]: s for s in mix.sources}, tests


def test_the_weights_hold_in_the_drawn_counts(tmp_path: Path) -> None:
    general = general_file(tmp_path / "general.jsonl")
    counts, sources, test_sources = drawn_per_source([mix_override(general)], general)
    total = sum(counts.values())
    # the most rows that repeat none: the support sample's training split is used up at 80%
    assert counts[SUPPORT] == sources[SUPPORT]["available"]
    assert counts[str(general)] == round(0.2 * total)
    assert abs(counts[SUPPORT] / total - 0.8) < 1 / total
    assert {p: s["sampled"] for p, s in sources.items()} == {
        SUPPORT: counts[SUPPORT],
        str(general): counts[str(general)],
    }
    # held-out rows keep their source, interleaved so a max_examples cut holds both
    assert set(test_sources[:2]) == {SUPPORT, str(general)}

    # a total asked for: exact shares, the general source repeating no row, the support one some
    counts, sources, _ = drawn_per_source([mix_override(general), "data.mix_rows=1000"], general)
    assert counts == Counter({SUPPORT: 800, str(general): 200})
    assert sources[SUPPORT]["repeated"] == 800 - sources[SUPPORT]["available"]


def test_the_draw_is_fixed_by_the_seed(tmp_path: Path) -> None:
    general = general_file(tmp_path / "general.jsonl")

    def drawn(seed: int) -> list[str]:
        config = load_config(None, [mix_override(general, 1, 1), f"training.seed={seed}"])
        splits, _, _ = prepare_data(config.data, config.training.seed)
        return [ex.source for ex in splits["train"]]

    assert drawn(1) == drawn(1)
    assert sorted(drawn(1)) != sorted(drawn(2))  # other rows, not only another order


def test_the_mixed_splits_stay_on_disk_and_reach_other_ranks(tmp_path: Path) -> None:
    general = general_file(tmp_path / "general.jsonl")
    config = load_config(None, [mix_override(general)])
    splits, report, mix = prepare_data(config.data, config.training.seed)
    # views over each source's Arrow files (trainer/rowstore.py), not rows held in memory
    assert all(isinstance(rows, Interleaved) for rows in splits.values())
    assert report.splits == {name: len(rows) for name, rows in splits.items()}
    assert report.source == f"mix({SUPPORT} x0.8, {general} x0.2)"
    # torchrun's other ranks receive rank 0's prepared data pickled (trainer/distributed.py)
    sent, sent_mix = pickle.loads(pickle.dumps((splits, mix)))
    for name, rows in splits.items():
        assert sent[name] == list(rows)
    assert sent_mix.paths(sent_mix.heldout["test"]) == mix.paths(mix.heldout["test"])
    assert list(splits["test"][:3]) == list(splits["test"])[:3]


def test_sample_counts_are_exact_shares() -> None:
    assert sample_counts([100, 100, 100], [1, 1, 1], 10) == [4, 3, 3]
    assert sample_counts([50, 1000], [0.5, 0.5]) == [50, 50]
    assert sum(sample_counts([7, 9, 11], [0.3, 0.3, 0.4], 101)) == 101


def test_bad_mixes_are_named(tmp_path: Path) -> None:
    general = general_file(tmp_path / "general.jsonl")
    with pytest.raises(ConfigError) as err:
        load_config(None, [mix_override(general, 0.8, 0), "data.test_path=" + str(general)])
    text = str(err.value)
    assert "data.mix[1].weight must be > 0" in text
    assert "data.test_path cannot be used with data.mix" in text
    with pytest.raises(ConfigError, match=r"data.mix\[1\].path: .*missing.jsonl: no such file"):
        load_config(None, [f"data.mix=[{{path: {SUPPORT}}}, {{path: {tmp_path / 'missing.jsonl'}}}]"])
    result = CliRunner().invoke(cli, ["train", "--dry-run", "data.mix=[{path: x, wieght: 1}]"])
    assert result.exit_code != 0 and "data.mix" in result.output and "Traceback" not in result.output


def test_a_mixed_run_records_its_sources_and_per_source_metrics(tmp_path: Path, tiny_base: object) -> None:
    general = general_file(tmp_path / "general.jsonl")
    args = [
        "train",
        "--base-model",
        "embedded/tiny-llama",
        "--output-dir",
        str(tmp_path / "runs"),
        "--name",
        "mixed",
        "--max-steps",
        "2",
        "--no-push",
        mix_override(general),
        "data.mix_rows=50",
        "data.max_seq_len=256",
        "data.overlong=truncate",
        "eval.baseline=few_shot:1",
        "eval.max_examples=8",
        "eval.max_new_tokens=4",
        "eval.general_max_examples=0",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    shown = "".join(result.output.split())  # titles and long paths wrap at the terminal's width
    assert f"held-outevaluation:{SUPPORT}(4rows)" in shown and f"{general}(4rows)" in shown
    lineage = json.loads(next((tmp_path / "runs").glob("mixed-*/lineage.json")).read_text())
    mix = lineage["data_mix"]
    assert [(s["path"], s["weight"], s["sampled"]) for s in mix["sources"]] == [
        (SUPPORT, 0.8, 40),
        (str(general), 0.2, 10),
    ]
    assert all(len(s["sha256"]) == 64 for s in mix["sources"])
    per_source = mix["heldout_metrics"]
    assert set(per_source) == {SUPPORT, str(general)}
    for sides in per_source.values():
        assert set(sides) == {"base", "prompted", "adapter"}
        assert sides["adapter"]["rows"] == 4 and "exact_match" in sides["adapter"]
    assert lineage["dataset"]["source"].startswith("mix(")
    card = card_text("mixed", 1, lineage, AdapterInfo(8, 16.0, ("q_proj",), ()))
    assert "## Data mix" in card and f"| `{SUPPORT}` | 0.8 | 40 of " in card
    assert f"| `{general}` | 4 | adapter |" in card and f"| `{general}` | 4 | base+few_shot:1 |" in card
