"""Does DPO learn what people prefer? base vs SFT vs DPO-from-SFT on SmolLM2-135M.

1. SFT on `sample:support-tickets` (the ticket line) -> support@1;
2. DPO from support@1 on `sample:support-prefs` (chosen answers add a polite closing line, rejected
   ones do not) -> support@2, support@1 being the reference policy;
3. all three answer the held-out prompts of `support-prefs` (greedy); reported per model: the rate of
   the preferred property (`trainer.samples.polite_closing`) and the exact match of the first line
   against the ticket line (the task), each with a 95% bootstrap interval, and DPO minus SFT paired.

Run: `python -m loadtests.bench_preference [--sft-steps 60] [--dpo-steps 60]` (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtests.record import RESULTS, write_result


def _train(root: str, runs: Path, overrides: list[str]) -> str:
    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    config = load_config(None, [f"output_dir={runs}", *overrides])
    return publish(run(config, console=Console(stderr=True), registry=root), root)


def _first_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " ".join(lines[0].split()) if lines else ""


def measure(args: argparse.Namespace, root: str, runs: Path) -> dict[str, Any]:
    from trainer.compare import bootstrap_diff
    from trainer.evaluate_versions import evaluate_refs
    from trainer.preference_data import read_preferences, split_preferences
    from trainer.samples import polite_closing, sample_path

    common = [
        f"base_model={args.base_model}",
        "name=support",
        "lora.r=16",
        "lora.alpha=32",
        "data.max_seq_len=192",
        "eval.max_examples=8",
    ]
    started = time.monotonic()
    sft = _train(
        root,
        runs,
        [
            *common,
            "data.path=sample:support-tickets",
            f"training.max_steps={args.sft_steps}",
            "training.lr=1e-3",
        ],
    )
    dpo = _train(
        root,
        runs,
        [
            *common,
            "data.path=sample:support-prefs",
            "training.objective=dpo",
            f"init_adapter={sft}",
            f"training.max_steps={args.dpo_steps}",
            f"training.lr={args.dpo_lr}",
            f"training.beta={args.beta}",
            f"training.rpo_alpha={args.rpo_alpha}",
            "training.batch_size=4",
            "eval.compare_base=false",
        ],
    )
    splits, _ = split_preferences(read_preferences(sample_path("support-prefs"), "dpo"), 0.05, 0.12)
    held_out = splits["test"][: args.heldout]
    data = runs / "heldout.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": r.messages[-1][1], "completion": r.rejected}) + "\n" for r in held_out)
    )
    results, _ = evaluate_refs(["base", sft, dpo], str(data), root, max_new_tokens=48, max_seq_len=192)
    out: dict[str, Any] = {"models": {}, "held_out": len(held_out), "sft": sft, "dpo": dpo}
    flags: dict[str, dict[str, list[float]]] = {}
    for label, ref in (("base", "base"), ("sft", sft), ("dpo", dpo)):
        preds = results[ref].predictions
        polite = [float(polite_closing(p)) for p in preds]
        em = [
            float(_first_line(p) == _first_line(r.rejected or ""))
            for p, r in zip(preds, held_out, strict=True)
        ]
        flags[label] = {"polite": polite, "em": em}
        zeros = [0.0] * len(preds)
        out["models"][label] = {
            "ref": ref,
            "polite_rate": bootstrap_diff(zeros, polite),
            "first_line_exact_match": bootstrap_diff(zeros, em),
            "examples": preds[:3],
        }
    out["dpo_minus_sft"] = {
        "polite_rate": bootstrap_diff(flags["sft"]["polite"], flags["dpo"]["polite"]),
        "first_line_exact_match": bootstrap_diff(flags["sft"]["em"], flags["dpo"]["em"]),
    }
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--dpo-lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rpo-alpha", type=float, default=1.0, help="0: plain DPO (training.rpo_alpha)")
    parser.add_argument("--heldout", type=int, default=48)
    parser.add_argument("--out-dir", default=str(RESULTS), help="Where bench_preference.json goes.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args, str(Path(tmp) / "registry"), Path(tmp) / "runs")
    figures["settings"] = {k: v for k, v in vars(args).items() if k != "out_dir"}
    write_result("bench_preference", figures, args.out_dir)
    for label, m in figures["models"].items():
        p, em = m["polite_rate"], m["first_line_exact_match"]
        print(
            f"{label:5} polite {p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}]  first-line EM {em[0]:.3f} [{em[1]:.3f}, {em[2]:.3f}]"
        )
    d = figures["dpo_minus_sft"]
    print(f"DPO - SFT: polite {d['polite_rate']}, first-line EM {d['first_line_exact_match']}")


if __name__ == "__main__":
    main()
