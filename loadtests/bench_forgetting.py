"""Does the support-tickets adapter forget, and does mixing general data in help? (issue #34's Measure)

1. `platform train --config trainer/configs/support-tickets.yaml` (lr 1e-3, r 16, all linear
   layers) on `sample:support-tickets` (the unmixed adapter) and on `data.mix` of
   support-tickets and `sample:general-train` (80/20 by default: the mixed adapter), same steps,
   seed and settings, both published to a scratch registry;
2. the held-out rows of support-tickets (its test split: the same rows in both runs, since each
   source is split on its own by a hash of the prompt): zero-shot base, few-shot base (shots from
   the training split), unmixed and mixed adapter, scored by exact match and ROUGE-L, each against
   the unmixed adapter with the paired bootstrap of trainer/compare.py
   (`trainer.evaluate_versions.evaluate_refs`, what `platform eval --data` runs);
3. the general-capability set (trainer/general/, `platform eval --general`'s answers): base,
   unmixed, mixed; each adapter's drop against the base with a paired 95% bootstrap interval.

Target: mixing halves the general-set drop (or better) while the task's exact match stays within
0.02 of the unmixed adapter's.

Run: `python -m loadtests.bench_forgetting` (about 20-25 minutes on 2 quiet cores by default:
120 steps of ~2.7 s per run, about 8 minutes of generation for 4 models x ~50 held-out rows and
3 x 300 general items).
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

SUPPORT = "sample:support-tickets"
GENERAL = "sample:general-train"
EM_MARGIN = 0.02
"""The most task exact match the mixed adapter may lose against the unmixed one (the target)."""


def _train(root: str, runs: Path, overrides: list[str]) -> tuple[str, dict[str, Any]]:
    """One `platform train --config trainer/configs/support-tickets.yaml` run (the support-tickets
    adapter of `platform demo`), published: (its ref, its lineage)."""
    from trainer.config import load_config, shipped_config
    from trainer.publish import publish
    from trainer.recipe import run

    config = load_config(shipped_config("support-tickets"), [f"output_dir={runs}", *overrides])
    result = run(config, console=Console(stderr=True), registry=root)
    return publish(result, root), result.lineage


def _write_rows(path: Path, rows: Any) -> Path:
    """Single-turn rows as prompt/completion JSONL (what `evaluate_refs` reads)."""
    lines = []
    for ex in rows:
        assert len(ex.messages) == 1, "support-tickets rows are one user turn"
        lines.append(json.dumps({"prompt": ex.messages[0][1], "completion": ex.completion}) + "\n")
    path.write_text("".join(lines))
    return path


def _heldout(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(the held-out rows of support-tickets, its training rows for the shots) as the runs split them."""
    from trainer.config import load_config, shipped_config
    from trainer.data import prepare

    d = load_config(shipped_config("support-tickets"), []).data
    splits, _ = prepare(SUPPORT, val_fraction=d.val_fraction, test_fraction=d.test_fraction)
    test = list(splits["test"])[: args.heldout or None]
    return _write_rows(work / "heldout.jsonl", test), _write_rows(work / "shots.jsonl", splits["train"])


def task(args: argparse.Namespace, root: str, work: Path, refs: dict[str, str]) -> dict[str, Any]:
    """Exact match and ROUGE-L of every model on the held-out rows, each paired against the unmixed adapter."""
    from trainer.compare import paired_comparisons
    from trainer.evaluate_versions import evaluate_refs

    data, shots = _heldout(args, work)
    results, rows = evaluate_refs(
        list(refs.values()),
        str(data),
        root,
        max_new_tokens=args.max_new_tokens,
        max_seq_len=args.max_seq_len,
        shots=str(shots),
        seed=args.seed,
    )
    order = ["unmixed", *(k for k in refs if k != "unmixed")]
    paired = paired_comparisons({k: results[refs[k]] for k in order}, rows)
    out: dict[str, Any] = {"rows": len(rows), "models": {}}
    for label, ref in refs.items():
        m = results[ref].metrics
        out["models"][label] = {
            "ref": ref,
            "exact_match": m["exact_match"],
            "rougeL": m["rougeL"],
            "examples": results[ref].predictions[:2],
        }
    for c in paired:  # named by label, as given
        out["models"][c.ref][f"vs_unmixed_{c.metric}"] = [c.difference, c.low, c.high]
    return out


def general(args: argparse.Namespace, root: str, refs: dict[str, str]) -> dict[str, Any]:
    """General-set accuracy of base and adapters, and each adapter's drop against the base (paired)."""
    from trainer.compare import bootstrap_diff
    from trainer.evaluate_versions import general_answers
    from trainer.general import correct, score

    answers, items = general_answers(list(refs.values()), root, max_examples=args.general)
    hits = {
        k: [float(correct(p, it)) for p, it in zip(answers[v], items, strict=True)] for k, v in refs.items()
    }
    out: dict[str, Any] = {"items": len(items), "models": {}}
    for label, ref in refs.items():
        out["models"][label] = {"ref": ref, **score(answers[ref], items)}
        if label != "base":  # base - adapter: what fine-tuning took away
            out["models"][label]["drop"] = list(bootstrap_diff(hits[label], hits["base"]))
    return out


def verdict(task_: dict[str, Any], general_: dict[str, Any]) -> dict[str, Any]:
    """The issue's target: the mixed adapter's general drop at most half the unmixed one's, and its
    exact match at most EM_MARGIN below the unmixed one's."""
    unmixed, mixed = general_["models"]["unmixed"]["drop"], general_["models"]["mixed"]["drop"]
    em_diff = task_["models"]["mixed"]["vs_unmixed_exact_match"][0]
    forgot = unmixed[1] > 0  # the unmixed drop's interval excludes 0
    halved = mixed[0] <= unmixed[0] / 2 if unmixed[0] > 0 else None
    kept = em_diff >= -EM_MARGIN
    return {
        "unmixed_forgot": forgot,
        "drop_ratio": mixed[0] / unmixed[0] if unmixed[0] > 0 else None,
        "halved": halved,
        "em_within_margin": kept,
        "target_met": bool(halved) and kept,
    }


def measure(args: argparse.Namespace, root: str, work: Path) -> dict[str, Any]:
    common = [
        f"base_model={args.base_model}",
        "name=support",
        f"training.max_steps={args.steps}",
        f"training.seed={args.seed}",
        "eval.compare_base=false",  # base, few-shot base and the general set: evaluated below, once
        f"eval.max_examples={args.train_eval}",
        *([f"training.lr={args.lr}"] if args.lr else []),
    ]
    started = time.monotonic()
    unmixed, _ = _train(root, work / "runs", [*common, f"data.path={SUPPORT}"])
    weights = f"[{{path: {SUPPORT}, weight: {1 - args.general_share}}}, {{path: {GENERAL}, weight: {args.general_share}}}]"
    mixed, lineage = _train(root, work / "runs", [*common, f"data.mix={weights}"])
    trained = time.monotonic()
    refs = {"base": "base", "few_shot": f"base+{args.baseline}", "unmixed": unmixed, "mixed": mixed}
    task_ = task(args, root, work, refs)
    evaluated = time.monotonic()
    general_ = general(args, root, {k: refs[k] for k in ("base", "unmixed", "mixed")})
    mix = lineage["data_mix"]
    return {
        "task": task_,
        "general": general_,
        "verdict": verdict(task_, general_),
        "mix": [{k: s[k] for k in ("path", "weight", "sampled", "available")} for s in mix["sources"]],
        "seconds": {
            "train": round(trained - started, 1),
            "task_eval": round(evaluated - trained, 1),
            "general_eval": round(time.monotonic() - evaluated, 1),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--steps", type=int, default=120, help="training.max_steps of each run (~2.8 epochs)")
    parser.add_argument("--lr", type=float, default=0.0, help="training.lr (0: the config's, 1e-3)")
    parser.add_argument("--seed", type=int, default=42, help="training.seed of both runs (and the shots)")
    parser.add_argument("--general-share", type=float, default=0.2, help="general-train's weight in the mix")
    parser.add_argument("--baseline", default="few_shot", help="the prompted base: few_shot or few_shot:K")
    parser.add_argument("--heldout", type=int, default=0, help="held-out support rows scored (0: all)")
    parser.add_argument("--general", type=int, default=0, help="general-set items scored (0: all 300)")
    parser.add_argument("--train-eval", type=int, default=4, help="eval.max_examples inside each run")
    parser.add_argument("--max-seq-len", type=int, default=512, help="of the evaluation's prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out-dir", default=str(RESULTS), help="Where bench_forgetting.json goes.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args, str(Path(tmp) / "registry"), Path(tmp))
    figures["settings"] = {k: v for k, v in vars(args).items() if k != "out_dir"}
    write_result("bench_forgetting", figures, args.out_dir)
    for label, m in figures["task"]["models"].items():
        print(f"{label:9} exact match {m['exact_match']:.3f}  ROUGE-L {m['rougeL']:.3f}")
    for label, m in figures["general"]["models"].items():
        print(f"{label:9} general {m['general']:.3f}  drop {m.get('drop', '-')}")
    print(f"verdict: {figures['verdict']}")
    return figures


if __name__ == "__main__":
    main()
