"""`platform train`, `platform eval`, `platform merge`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.judge_options import judge_options
from cli.lm_eval_cli import lm_eval_options, run_lm_eval_refs
from cli.options import registry_options
from cli.tables import Record, print_records

if TYPE_CHECKING:
    from trainer.judge import JudgeSpec

console = Console()


def metrics_records(columns: dict[str, dict[str, float]]) -> list[Record]:
    """One record per metric, a column per evaluated model, and their difference when there are two."""
    names = list(columns)
    records = []
    for key in next(iter(columns.values()), {}):
        values = [columns[n].get(key) for n in names]
        record = {"metric": key} | {
            n: "-" if v is None else f"{v:.4f}" for n, v in zip(names, values, strict=True)
        }
        a, b = [*values, None, None][:2]
        if len(names) == 2 and a is not None and b is not None:
            record["delta"] = f"{b - a:+.4f}"
        records.append(record)
    return records


@click.command("train")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (see trainer/configs/)."
)
@click.option(
    "--base-model",
    help="embedded/smollm2-135m-instruct-q4_1 (default), embedded/tiny-llama, a folder or Hub id.",
)
@click.option("--data", help="JSONL file or folder, sample:<name>, or hf:<dataset>.")
@click.option("--name", help="Adapter name (registry name).")
@click.option("--output-dir", help="Folder for run outputs (default runs/).")
@click.option("--epochs", type=float, help="Passes over the training rows (default 2).")
@click.option("--max-steps", type=int, help="Optimizer steps (overrides --epochs).")
@click.option("--qlora", is_flag=True, help="4-bit NF4 QLoRA (bitsandbytes).")
@click.option("--no-push", is_flag=True, help="Do not push the adapter to the registry.")
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (rows, token lengths, steps, warnings) and exit."
)
@click.option(
    "--init-adapter",
    help="Continue from this version's weights (name@3, name:prod): same base, rank, targets.",
)
@click.option(
    "--tracking",
    type=click.Choice(["mlflow", "tensorboard", "wandb", "none"]),
    multiple=True,
    help="Experiment tracker(s); W&B runs offline unless WANDB_MODE says otherwise.",
)
@click.option(
    "--tracking-uri",
    help="MLflow tracking server, e.g. http://127.0.0.1:5000 (turns MLflow on; default MLFLOW_TRACKING_URI).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Train on Ray: N Ray Train workers (data-parallel), checkpoints in shared storage, "
    "restarted from the latest one when a worker dies.",
)
@click.option(
    "--ray-address",
    help="Ray cluster for --workers (auto, ray://head:10001, host:6379); default: a local Ray.",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="GPUs each Ray worker reserves (0: CPU training).",
)
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="With --workers: restarts from the latest checkpoint after a worker dies.",
)
@click.option(
    "--checkpoint-storage",
    help="With --workers: folder or URL every worker reaches (default: train-checkpoints/ "
    "beside the registry's version files).",
)
@registry_options
@click.argument("overrides", nargs=-1)
@handle_errors
def train_cmd(
    config_path: str | None,
    base_model: str | None,
    data: str | None,
    name: str | None,
    output_dir: str | None,
    epochs: float | None,
    max_steps: int | None,
    qlora: bool,
    no_push: bool,
    dry_run: bool,
    init_adapter: str | None,
    tracking: tuple[str, ...],
    tracking_uri: str | None,
    workers: int | None,
    ray_address: str | None,
    gpus_per_worker: float,
    max_failures: int,
    checkpoint_storage: str | None,
    registry_root: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Fine-tune a LoRA adapter. OVERRIDES are key=value pairs, e.g. lora.r=8 training.lr=5e-4.

    With no arguments: the embedded SmolLM2-135M-Instruct on the shipped support-tickets sample,
    with the defaults meant for real data (2 epochs, lr 2e-4); the plan is printed before training.
    With --workers N the same recipe runs on N Ray Train workers and publishes one version.
    """
    ray_only = {
        "--ray-address": ray_address is not None,
        "--gpus-per-worker": bool(gpus_per_worker),
        "--checkpoint-storage": checkpoint_storage is not None,
    }
    given = [flag for flag, set_ in ray_only.items() if set_]
    if given and workers is None:
        raise click.UsageError(f"{', '.join(given)}: only with --workers N (training on Ray)")
    from trainer.config import load_config
    from trainer.publish import train_and_publish
    from trainer.recipe import dry_run as plan_only

    flags = {
        "base_model": base_model,
        "data.path": data,
        "name": name,
        "output_dir": output_dir,
        "training.epochs": epochs,
        "training.max_steps": max_steps,
        "lora.quantize": "nf4" if qlora else None,
        "init_adapter": init_adapter,
        "training.tracking": ",".join(tracking) or None,
        "training.tracking_uri": tracking_uri,
    }
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    config = load_config(config_path, [*extra, *overrides])
    if dry_run:
        plan_only(config, console)
        return
    if workers is not None:
        from trainer.ray_launch import RayLaunch, train_on_ray

        launch = RayLaunch(
            workers=workers,
            address=ray_address,
            gpus_per_worker=gpus_per_worker,
            max_failures=max_failures,
            checkpoint_storage=checkpoint_storage,
        )
        print_run(train_on_ray(config, launch, registry_root, Console(stderr=True), push=not no_push))
        return
    # under torchrun/accelerate every process runs this; rank 0 alone gets a result (and publishes)
    result = train_and_publish(config, Console(stderr=True), registry_root, push=not no_push)
    if result is not None:
        print_run(result)


def print_run(result: Any) -> None:
    d = result.data
    console.print(
        f"data: {d.source} ({d.shape}) {d.rows_read} rows, {d.duplicates_dropped} duplicates dropped, "
        f"splits {d.splits}, leakage {d.leakage}, too long: {d.overlong_dropped} dropped, "
        f"{d.truncated} truncated"
    )
    training = result.lineage.get("training", {})
    best = training.get("best_checkpoint")
    if best:
        console.print(f"kept the best checkpoint: step {best['step']} ({best['metric']} {best['value']:.4f})")
    for warning in training.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    baseline = result.lineage.get("baseline") or {}
    labels = {"prompted": baseline.get("label", "prompted")}
    sides = {labels.get(k, k): v for k, v in result.metrics.items() if k != "preference"}
    if sides:
        print_records(console, "held-out evaluation", metrics_records(sides))
    if baseline.get("verdict"):
        console.print(f"verdict: {baseline['verdict']}")
    elif baseline.get("note"):
        console.print(f"prompted baseline ({baseline['setting']}): {baseline['note']}")
    general = result.lineage.get("general")
    if general:
        shown = ", ".join(f"{side} {general[side]['general']:.4f}" for side in ("base", "adapter"))
        console.print(f"general set ({general['items']} items, exact match): {shown}")
    print_mix(result.lineage.get("data_mix"), labels)
    if "preference" in result.metrics:
        shown = ", ".join(f"{k} {v:g}" for k, v in result.metrics["preference"].items())
        console.print(f"held-out preference pairs (policy vs reference): {shown}")
    for s in result.samples[:2]:
        console.print(f"[dim]prompt:[/] {s['prompt'][:200]}")
        for key in ("base_prediction", "prompted_prediction", "adapter_prediction"):
            if key in s:
                console.print(f"  [bold]{key.split('_')[0]:>9}[/]: {s[key][:200]}")
        console.print(f"  [bold] expected[/]: {s['reference'][:200]}")
    console.print(
        f"trained in {result.train_seconds:.0f}s, total {result.total_seconds:.0f}s; run folder {result.run_dir}"
    )
    if result.registry_ref:
        console.print(f"registered as [bold green]{result.registry_ref}[/]")
    for line in tracking_lines(result.lineage.get("tracking") or {}):
        console.print(line)


def print_mix(mix: dict[str, Any] | None, labels: dict[str, str]) -> None:
    """`data.mix`: the rows drawn per source, and the held-out metrics per source (sides named by `labels`)."""
    if not mix:
        return
    drawn = [
        {
            "source": s["path"],
            "weight": f"{s['weight']:g}",
            "drawn": str(s["sampled"]),
            "of": str(s["available"]),
        }
        for s in mix["sources"]
    ]
    print_records(console, f"data mix (seed {mix['seed']})", drawn)
    per_source: dict[str, dict[str, dict[str, float]]] = mix.get("heldout_metrics") or {}
    for source, sides in per_source.items():
        rows = int(max((m.get("rows", 0.0) for m in sides.values()), default=0))
        shown = {
            labels.get(side, side): {k: v for k, v in m.items() if k != "rows"} for side, m in sides.items()
        }
        print_records(console, f"held-out evaluation: {source} ({rows} rows)", metrics_records(shown))


def tracking_lines(record: dict[str, Any]) -> list[str]:
    """Where each experiment tracker's run of this version is (the lineage's `tracking`)."""
    lines = []
    for name, info in record.items():
        where = info.get("run_url") or info.get("tracking_uri") or info.get("dir") or info.get("log_dir")
        run = f" run {info['run_id']}" if "run_id" in info else ""
        lines.append(f"{name}{run}: {where}")
    return lines


@click.command("eval")
@click.argument("refs", nargs=-1, required=True)
@click.option("--data", help="JSONL file (or sample:<name>) with held-out rows.")
@click.option(
    "--general",
    is_flag=True,
    help="Also score each ref on the shipped general-capability set (exact match; what it forgot).",
)
@click.option(
    "--shots",
    help="Training rows the `+few_shot` shots are drawn from (default: the first rows of --data, "
    "then left out of every ref's evaluation).",
)
@click.option("--max-examples", type=int, default=0, help="Evaluate at most N rows (0: all).")
@click.option(
    "--general-max-examples",
    type=click.IntRange(0),
    default=0,
    help="With --general: the first N items (0: all 300).",
)
@click.option("--max-new-tokens", type=int, default=64)
@click.option(
    "--server", help="Generate through a running `platform serve` at this URL instead of in-process."
)
@click.option("--report-dir", type=click.Path(file_okay=False), help="Write comparison.md/.json/.png here.")
@judge_options
@lm_eval_options
@registry_options
@handle_errors
def eval_cmd(
    refs: tuple[str, ...],
    data: str | None,
    general: bool,
    shots: str | None,
    max_examples: int,
    general_max_examples: int,
    max_new_tokens: int,
    server: str | None,
    report_dir: str | None,
    judge: JudgeSpec | None,
    registry_root: str | None,
    **lm_eval: Any,
) -> None:
    """Evaluate versions (name, name@3, name:alias, or `base`) on the same rows and compare them.

    Each version after the first is compared with the first: per-example win/tie/loss and a
    95% paired-bootstrap interval on the difference of exact match and ROUGE-L. A ref may add a
    prompting after `+`, as eval.baseline spells it: `base+few_shot:4`, `base+few_shot` (as many
    as fit), `base+system:prompt.txt`; e.g. `platform eval base+few_shot:4 support@3 --data FILE`.
    With a judge (--judge REF or --judge-url URL) and two versions: the judge compares their
    answers on every row in both orders, by the review rubric, and its agreement with people who
    reviewed the same pair is shown. With --lm-eval, lm-evaluation-harness tasks run on each
    version (in-process, or through --server) and their scores are recorded with it;
    --max-examples then limits the documents per task.
    """
    tasks = lm_eval["lm_eval_tasks"]
    if not data and not general and not tasks:
        raise click.UsageError(
            "give what to evaluate on: --data FILE (held-out rows), --general, --lm-eval TASKS (one or more)"
        )
    if judge is not None and (len(refs) != 2 or not data):
        raise click.UsageError(f"a judge compares two versions' answers on --data FILE; {len(refs)} given")
    _check_refs(refs)
    if tasks:
        run_lm_eval_refs(
            console,
            list(refs),
            tasks,
            registry_root,
            server=server,
            tasks_dir=lm_eval["lm_eval_tasks_dir"],
            limit=max_examples,
            fewshot=lm_eval["lm_eval_fewshot"],
            chat=lm_eval["lm_eval_chat"],
        )
    if data:
        _eval_data(
            list(refs), data, shots, max_examples, max_new_tokens, server, report_dir, judge, registry_root
        )
    if general:
        if server:
            raise click.UsageError("--general runs in-process; leave out --server")
        from trainer.evaluate_versions import general_refs

        scores, items = general_refs(list(refs), registry_root, max_examples=general_max_examples)
        title = f"general-capability set ({len(items)} items, exact match)"
        print_records(console, title, metrics_records(scores))


def _check_refs(refs: tuple[str, ...]) -> None:
    from trainer.errors import BaselineError
    from trainer.evaluate_versions import targets

    try:
        targets(list(refs))
    except BaselineError as exc:
        raise click.BadParameter(str(exc), param_hint="REFS") from None


def _eval_data(
    refs: list[str],
    data: str,
    shots: str | None,
    max_examples: int,
    max_new_tokens: int,
    server: str | None,
    report_dir: str | None,
    judge: JudgeSpec | None,
    registry_root: str | None,
) -> None:
    from trainer.compare import paired_comparisons, verdict, write_report
    from trainer.evaluate_versions import evaluate_refs

    results, examples = evaluate_refs(
        refs,
        data,
        registry_root,
        max_examples=max_examples,
        max_new_tokens=max_new_tokens,
        server=server,
        shots=shots,
    )
    print_records(
        console, f"evaluation on {data}", metrics_records({k: v.metrics for k, v in results.items()})
    )
    comparisons = paired_comparisons(results, examples)
    for c in comparisons:
        console.print(
            f"{c.ref} vs {c.against} on {c.metric}: win {c.wins} / tie {c.ties} / loss {c.losses}, "
            f"difference {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
        )
    if "+" in refs[0]:  # the first is a prompted baseline: say whether each version beats it
        for ref in refs[1:]:
            console.print(f"verdict for {ref}: {verdict(comparisons, ref, refs[0])}")
    if report_dir:
        console.print(f"report: {write_report(Path(report_dir), data, results, comparisons, examples)}")
    if judge is not None:
        print_judge(judge, (refs[0], refs[1]), examples, results, registry_root, report_dir)


def print_judge(
    judge: JudgeSpec,
    refs: tuple[str, str],
    examples: list[Any],
    results: dict[str, Any],
    registry_root: str | None,
    report_dir: str | None,
) -> None:
    """The judge's verdicts on the two versions' answers (and its agreement with people)."""
    from trainer.judge import judge_versions

    answers = (results[refs[0]].predictions, results[refs[1]].predictions)
    report = judge_versions(judge, refs, examples, answers, registry_root)
    console.print(Text(report.summary()), soft_wrap=True)
    for a in report.agreement:
        console.print(Text(a.summary()), soft_wrap=True)
    if report_dir:
        path = Path(report_dir) / "judge.json"
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        console.print(f"judge report: {path}")


@click.command("merge")
@click.argument("ref")
@click.option(
    "--output", required=True, type=click.Path(file_okay=False), help="Folder for the merged model."
)
@registry_options
@handle_errors
def merge_cmd(ref: str, output: str, registry_root: str | None) -> None:
    """Merge an adapter into its base model and save a standalone model (safetensors)."""
    from trainer.merge import merge

    path = merge(ref, Path(output), registry_root)
    console.print(f"merged model written to {path}")
