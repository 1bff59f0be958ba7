"""Training speed: `platform train` against TRL's SFTTrainer and a plain padded Trainer + peft loop.

Same base model, data split, LoRA settings (rank, alpha, targets), sequence length, global batch,
learning rate, schedule, steps and seed for all three; each runs in its own process so its peak
RSS is its own. Figures per dataset and trainer:
- training tokens/s: real (non-padding) input tokens the trainer consumed / wall time of its
  `train()` (each Trainer counts them with `include_num_input_tokens_seen="non_padding"`);
- peak RSS of the process (os.wait4);
- final validation loss: one function for all three (mean completion-token loss over the same
  validation rows, unpadded), so the figures compare.

"plain" pads each batch to its longest row (transformers' DataCollatorForSeq2Seq, the usual
recipe). Run (a few dozen steps, minutes on 2 cores):

    python -m loadtests.bench_train --steps 30 --rounds 2

With `--rounds N` every trainer runs N times per dataset, the order reversed every other round
(ours, TRL, plain, then plain, TRL, ours): tokens/s pooled over the rounds, so a host whose speed
drifts over minutes (seen here: +-15% within ten minutes) favours no trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results"
CONFIGS = ("ours", "trl", "plain")
DATASETS = ("support-tickets", "contact-json", "wide-spread")
VAL_FRACTION = 0.05
WIDE = "wide-spread"
"""A generated set whose rows spread from ~55 to ~250 tokens (the shipped samples' rows are all
short and alike, so a padded batch wastes little on them)."""


# -- shared by the three trainers ------------------------------------------------------------
def wide_spread_rows(count: int = 1200, seed: int = 7) -> list[dict[str, str]]:
    """Prompt/completion rows asking for 1-20 numbered steps: rows of ~55 to ~250 tokens."""
    import random

    rng = random.Random(seed)
    verbs = ["check", "open", "clean", "label", "measure", "replace", "tighten", "record", "test", "close"]
    things = ["valve", "filter", "cable", "panel", "hinge", "sensor", "gasket", "fuse", "belt", "latch"]
    how = ["slowly", "by hand", "twice", "with the tool", "before noon", "in order", "carefully", "again"]
    tasks = ["service the pump", "reset the router", "prepare the room", "ship the parcel", "fix the door"]
    rows = []
    for i in range(count):
        n = rng.randint(1, 20)
        steps = [
            f"{k}. {rng.choice(verbs).capitalize()} the {rng.choice(things)} {rng.choice(how)}."
            for k in range(1, n + 1)
        ]
        rows.append(
            {
                "prompt": f"Request {i}: write {n} numbered steps to {rng.choice(tasks)}.",
                "completion": "\n".join(steps),
            }
        )
    return rows


def data_path(dataset: str, work: Path) -> str:
    """`sample:<name>`, or the generated wide-spread set written (same bytes every time) under `work`."""
    if dataset != WIDE:
        return f"sample:{dataset}"
    path = work / f"{WIDE}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in wide_spread_rows()))
    return str(path)


def _splits(dataset: str, work: Path, rows: int) -> Any:
    """The dataset's split (seeded), its training rows cut to the first `rows`: with `rows` = steps x
    batch every trainer sees the same rows once, whatever order its sampler draws them in, so the
    validation losses compare (otherwise a sampler that groups by length trains on other rows)."""
    from trainer.data import prepare

    splits = prepare(data_path(dataset, work), val_fraction=VAL_FRACTION, test_fraction=0.0)[0]
    return {"train": list(splits["train"])[:rows], "val": list(splits["val"])}


def training_file(rows: list[Any], path: Path) -> str:
    """Training rows (`_splits`' train) as a chat JSONL for `platform train`."""
    with path.open("w") as out:
        for ex in rows:
            turns = [*ex.prompt_messages, {"role": "assistant", "content": ex.completion}]
            out.write(json.dumps({"messages": turns}) + "\n")
    return str(path)


def _encoded(tokenizer: Any, examples: list[Any], seq_len: int) -> list[Any]:
    from trainer.template import encode

    return [encode(tokenizer, ex, seq_len) for ex in examples]


def val_loss(model: Any, rows: list[Any]) -> float:
    """Mean loss over every completion token of the validation rows, one unpadded row at a time."""
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row.input_ids], device=device)
            labels = torch.tensor([row.labels], device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((target != -100).sum())
    return total / max(count, 1)


def _lora(model: Any, args: argparse.Namespace) -> Any:
    from peft import LoraConfig

    from trainer.model import resolve_targets

    return LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=resolve_targets(model, "all-linear"),
        bias="none",
        task_type="CAUSAL_LM",
    )


PRECISIONS = ("fp32", "bf16")
"""A trainer's precision: `--precision` for all, or a config's own suffix (`--configs ours:bf16,plain,
plain:bf16`). bf16 is TRL's and the plain loop's autocast (`TrainingArguments(bf16=True)`) and ours'
`training.precision=bf16`: on a CPU, the frozen base's matmuls in bf16 and the rest in fp32
(trainer/cpu_bf16.py), what ours' default `auto` picks on a CPU with bf16 instructions."""


def config_parts(config: str, precision: str) -> tuple[str, str]:
    """`trl:bf16` -> ("trl", "bf16"); a config without a suffix trains at `precision`."""
    name, _, own = config.partition(":")
    if name not in CONFIGS or (own and own not in PRECISIONS):
        raise ValueError(
            f"--configs: {config!r} is not one of {', '.join(CONFIGS)}, optionally :fp32 or :bf16"
        )
    return name, own or precision


def config_label(config: str, precision: str) -> str:
    """The results' key: the trainer's name, with `:bf16` when it trains in bf16."""
    name, own = config_parts(config, precision)
    return name if own == "fp32" else f"{name}:{own}"


def _common(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """TrainingArguments every trainer gets (ours sets the same through its config)."""
    import torch

    return {
        "output_dir": str(out),
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": args.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 3,
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "data_seed": 42,
        "gradient_checkpointing": False,
        "bf16": args.precision == "bf16",
        "use_cpu": not torch.cuda.is_available(),  # transformers refuses bf16 on a CPU without it
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "include_num_input_tokens_seen": "non_padding",
    }


def _timed_train(trainer: Any) -> tuple[float, int]:
    start = time.monotonic()
    trainer.train()
    return time.monotonic() - start, int(trainer.state.num_input_tokens_seen)


# -- the three trainers ---------------------------------------------------------------------
def run_ours(dataset: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`platform train`'s own code path (LoRARecipe setup + train), minus the evaluation by generation."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    splits = _splits(dataset, out.parent, args.steps * args.batch)  # the rows the other two train on
    config = load_config(
        None,
        [
            f"base_model={args.base_model}",
            "name=bench",
            f"output_dir={out}",
            f"data.path={training_file(splits['train'], out.parent / f'{dataset}-train.jsonl')}",
            "data.val_fraction=0",
            "data.test_fraction=0",
            f"data.max_seq_len={args.seq_len}",
            f"lora.r={args.rank}",
            f"lora.alpha={2 * args.rank}",
            f"training.max_steps={args.steps}",
            f"training.batch_size={args.batch}",
            "training.grad_accum=1",
            f"training.precision={args.precision}",
            "training.optimizer=adamw_torch",
            "data.overlong=truncate",  # as the other two do
            f"training.lr={args.lr}",
            "training.warmup_steps=3",
            "training.eval_every=0",
            *args.ours,
        ],
    )
    recipe = LoRARecipe(config, Console(quiet=True))
    recipe.setup()
    recipe.train()
    val_rows = _encoded(recipe.tokenizer, splits["val"], args.seq_len)  # the other two's rows
    return {
        "seconds": recipe.train_seconds,
        "tokens": recipe.trained["tokens"],
        "val_loss": val_loss(recipe.model, val_rows),
        "steps": recipe.steps,
        "overrides": list(args.ours),
    }


def _model_and_tokenizer(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from registry.basemodels import resolve_base_model
    from trainer.model import load_base, load_tokenizer

    base = resolve_base_model(args.base_model)
    torch.manual_seed(42)
    return load_base(base), load_tokenizer(base)


def run_plain(dataset: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """transformers.Trainer + peft, rows padded to the longest of their batch."""
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = _model_and_tokenizer(args)
    splits = _splits(dataset, out.parent, args.steps * args.batch)
    model = get_peft_model(model, _lora(model, args))
    train = [
        {"input_ids": r.input_ids, "labels": r.labels, "attention_mask": [1] * len(r.input_ids)}
        for r in _encoded(tokenizer, splits["train"], args.seq_len)
    ]
    torch.manual_seed(42)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_common(args, out), remove_unused_columns=False),
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    seconds, tokens = _timed_train(trainer)
    val_rows = _encoded(tokenizer, splits["val"], args.seq_len)
    return {"seconds": seconds, "tokens": tokens, "val_loss": val_loss(model, val_rows), "steps": args.steps}


def run_trl(dataset: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """TRL's SFTTrainer on conversational prompt/completion rows (completion-only loss)."""
    import torch
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    model, tokenizer = _model_and_tokenizer(args)
    splits = _splits(dataset, out.parent, args.steps * args.batch)
    rows = [
        {"prompt": ex.prompt_messages, "completion": [{"role": "assistant", "content": ex.completion}]}
        for ex in splits["train"]
    ]
    torch.manual_seed(42)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            **_common(args, out), max_length=args.seq_len, packing=False, completion_only_loss=True
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora(model, args),
    )
    seconds, tokens = _timed_train(trainer)
    val_rows = _encoded(tokenizer, splits["val"], args.seq_len)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "val_loss": val_loss(trainer.model, val_rows),
        "steps": args.steps,
    }


RUNNERS = {"ours": run_ours, "trl": run_trl, "plain": run_plain}


# -- the driver -----------------------------------------------------------------------------
def measure(config: str, dataset: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One trainer on one dataset in a child process; its figures plus its peak RSS."""
    out = work / f"{config.replace(':', '-')}-{dataset}"
    name, precision = config_parts(config, "fp32")  # a label without a suffix is fp32 (config_label)
    cmd = [
        sys.executable,
        "-m",
        "loadtests.bench_train",
        "--one",
        f"{name}:{precision}",
        "--dataset",
        dataset,
    ]
    cmd += [*_passthrough(args), "--work", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{config} on {dataset} failed (status {status})")
    figures: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    figures["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    figures["tokens_per_second"] = round(figures["tokens"] / figures["seconds"], 1)
    figures["seconds"] = round(figures["seconds"], 2)
    figures["val_loss"] = round(figures["val_loss"], 4)
    return figures


def round_order(configs: list[str], rounds: int) -> list[str]:
    """The trainers in `rounds` rounds, every other round reversed (ABC CBA ...): on a machine whose
    speed drifts over minutes (a shared host), each trainer gets early and late slots alike."""
    return [c for r in range(rounds) for c in (configs if r % 2 == 0 else configs[::-1])]


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One trainer's rounds as one figure: tokens/s over all its rounds (total tokens / total
    seconds), the highest peak RSS, the first round's loss (the same every round: same rows, seeds)."""
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    out = {**runs[0], "tokens": tokens, "seconds": round(seconds, 2)}
    out["tokens_per_second"] = round(tokens / seconds, 1)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    if len(runs) > 1:
        out["rounds_tokens_per_second"] = [r["tokens_per_second"] for r in runs]
        out["rounds_val_loss"] = [r["val_loss"] for r in runs]
    return out


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--base-model", args.base_model, "--steps", str(args.steps), "--batch", str(args.batch)]
    out += ["--seq-len", str(args.seq_len), "--lr", str(args.lr), "--rank", str(args.rank)]
    out += ["--precision", args.precision]
    for item in args.ours:
        out += ["--ours", item]
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ours (its first config in `--configs`) against the fastest run of the plain loop and of TRL
    (when each ran at several precisions), and its validation loss against TRL's most accurate run."""

    def runs(name: str) -> list[dict[str, Any]]:
        return [m for label, m in results.items() if label.partition(":")[0] == name]

    ours = next(iter(runs("ours")), None)
    plains, trls = runs("plain"), runs("trl")
    out: dict[str, Any] = {}
    if ours and plains:
        plain = max(plains, key=lambda m: m["tokens_per_second"])
        out["tokens_per_second_vs_plain"] = round(ours["tokens_per_second"] / plain["tokens_per_second"], 3)
    if ours and trls:
        fastest = max(trls, key=lambda m: m["tokens_per_second"])
        trl = min(trls, key=lambda m: m["val_loss"])
        out["tokens_per_second_vs_trl"] = round(ours["tokens_per_second"] / fastest["tokens_per_second"], 3)
        out["val_loss_vs_trl_pct"] = round(100 * (ours["val_loss"] - trl["val_loss"]) / trl["val_loss"], 2)
        out["targets_met"] = (
            out["tokens_per_second_vs_trl"] >= 1.0
            and out.get("tokens_per_second_vs_plain", 0) >= 1.3
            and abs(out["val_loss_vs_trl_pct"]) <= 2.0
        )
    return out


def write_result(out_dir: Path, figures: dict[str, Any], name: str = "bench_train") -> Path:
    """`<out_dir>/<name>.json` in the shared result schema (loadtests/record.py)."""
    from loadtests.record import write_result as write

    return write(name, figures, out_dir)


def plot(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    from loadtests.record import cpu_label

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = record["figures"]
    datasets = list(figures["results"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), dpi=100, squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        results = figures["results"][dataset]
        names = list(results)
        bars = ax.bar(
            names, [results[n]["tokens_per_second"] for n in names], color=["C0", "C1", "C2"][: len(names)]
        )
        for bar, n in zip(bars, names, strict=True):
            ax.annotate(
                f"val {results[n]['val_loss']:.3f}\n{results[n]['peak_rss_mb']:.0f} MB",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(dataset)
        ax.set_ylabel("training tokens/s (real tokens)")
        ax.margins(y=0.25)
    fig.suptitle(
        f"{figures['settings']['steps']} steps, batch {figures['settings']['batch']}, {cpu_label(record['machine'])}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="global batch (one process, no accumulation)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="of configs without their own (see PRECISIONS)",
    )
    parser.add_argument("--ours", action="append", default=[], help="extra key=value for platform train")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every trainer, in alternating order, pooled"
    )
    parser.add_argument("--out-dir", default=str(RESULTS), help="folder of the result file")
    parser.add_argument(
        "--result", default="bench_train", help="name of the result file (and of its benchmark field)"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        name, args.precision = config_parts(args.one, args.precision)
        figures = RUNNERS[name](args.dataset, args, Path(args.work))
        print(json.dumps(figures), flush=True)
        return
    import tempfile

    results: dict[str, dict[str, Any]] = {}
    keys = ("base_model", "steps", "batch", "seq_len", "lr", "rank", "ours")
    settings = {k: getattr(args, k) for k in keys}
    settings |= {"lora_alpha": 2 * args.rank, "targets": "all-linear", "dtype": "fp32"}
    settings["precision"] = args.precision
    settings["rounds"] = args.rounds
    try:
        configs = [config_label(c, args.precision) for c in args.configs.split(",")]
    except ValueError as exc:
        parser.error(str(exc))  # exit 2
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        for dataset in args.datasets.split(","):
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
            for config in round_order(configs, args.rounds):
                runs[config].append(measure(config, dataset, args, Path(work)))
                print(dataset, config, json.dumps(runs[config][-1]), flush=True)
                results[dataset] = {c: pooled(r) for c, r in runs.items() if r}
                ratio = {d: ratios(r) for d, r in results.items()}
                # written after every measurement: a run cut short keeps what it measured
                figures = {"settings": settings, "results": results, "ratios": ratio}
                out = write_result(Path(args.out_dir), figures, args.result)
    plot(json.loads(out.read_text()), out.with_suffix(".png"))
    print(json.dumps(ratio, indent=2))


if __name__ == "__main__":
    main()
