"""Offline comparison of versions on one test set: per-example win/tie/loss, bootstrap CIs, report.

`platform eval A B C --data test.jsonl` runs every version (and `base`) on the same rows, through
the PEFT engine in this process or a running server (`--server URL`), then compares each one
against the first.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import Example
from trainer.evaluate import EvalResult, text_metrics

BOOTSTRAP = 1000


@dataclass
class Comparison:
    ref: str
    against: str
    metric: str
    wins: int
    ties: int
    losses: int
    difference: float
    low: float
    high: float


def per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Exact match and ROUGE-L F1 for every row."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    em = [
        float(" ".join(p.split()) == " ".join(r.split()))
        for p, r in zip(predictions, references, strict=True)
    ]
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return {"exact_match": em, "rougeL": rouge}


def bootstrap_diff(
    a: list[float], b: list[float], seed: int = 0, rounds: int = BOOTSTRAP
) -> tuple[float, float, float]:
    """Mean of b - a with a 95% paired-bootstrap interval."""
    n = len(a)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / n if n else 0.0
    rng = random.Random(seed)
    samples = (
        sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds)) if n else [0.0]
    )
    return mean, samples[int(0.025 * len(samples))], samples[min(len(samples) - 1, int(0.975 * len(samples)))]


def paired_comparisons(results: dict[str, EvalResult], examples: list[Example]) -> list[Comparison]:
    """Each version after the first against the first, row by row: win/tie/loss and a bootstrap CI."""
    refs = [ex.completion for ex in examples]
    scores = {k: per_example(v.predictions, refs) for k, v in results.items()}
    names = list(results)
    out = []
    for name in names[1:]:
        for metric in ("exact_match", "rougeL"):
            a, b = scores[names[0]][metric], scores[name][metric]
            wins = sum(y > x for x, y in zip(a, b, strict=True))
            losses = sum(y < x for x, y in zip(a, b, strict=True))
            diff, low, high = bootstrap_diff(a, b)
            out.append(
                Comparison(name, names[0], metric, wins, len(a) - wins - losses, losses, diff, low, high)
            )
    return out


def verdict(comparisons: list[Comparison], adapter: str, baseline: str, label: str | None = None) -> str:
    """One line: does `adapter` beat `baseline` (shown as `label`) by a margin whose 95%
    paired-bootstrap interval stays above zero (on exact match or ROUGE-L, below zero on neither)?"""
    mine = [c for c in comparisons if c.ref == adapter and c.against == baseline]
    baseline = label or baseline
    shown = "; ".join(f"{c.metric} {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]" for c in mine)
    if any(c.low > 0 for c in mine) and not any(c.high < 0 for c in mine):
        return f"the adapter beats {baseline} ({shown})"
    if any(c.high < 0 for c in mine):
        return f"the adapter does worse than {baseline} ({shown}): the prompt alone does better"
    return (
        f"the adapter does not beat {baseline} by a margin that holds under the paired bootstrap "
        f"({shown}): a prompt may do as well"
    )


def via_server(
    url: str, model: str, examples: list[Example], max_tokens: int, api_key: str | None = None
) -> EvalResult:
    """Generate through a running `platform serve` (greedy), then score like the local path."""
    import openai

    client = openai.OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key=api_key or "none", max_retries=2)
    predictions = []
    for ex in examples:
        out = client.chat.completions.create(
            model=model,
            messages=ex.prompt_messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
        )
        predictions.append((out.choices[0].message.content or "").strip())
    return EvalResult(text_metrics(predictions, [ex.completion for ex in examples]), predictions)


def write_report(
    out_dir: Path,
    data: str,
    results: dict[str, EvalResult],
    comparisons: list[Comparison],
    examples: list[Example],
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = sorted({k for r in results.values() for k in r.metrics})
    lines = [
        f"# Offline comparison on `{data}` ({len(examples)} rows)",
        "",
        "| metric | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for m in metrics:
        lines.append(
            f"| {m} | " + " | ".join(f"{r.metrics.get(m, float('nan')):.4f}" for r in results.values()) + " |"
        )
    lines += [
        "",
        "| version | vs | metric | win | tie | loss | difference (95% bootstrap CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.ref} | {c.against} | {c.metric} | {c.wins} | {c.ties} | {c.losses} | "
            f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}] |"
        )
    report = out_dir / "comparison.md"
    report.write_text("\n".join(lines) + "\n")
    (out_dir / "comparison.json").write_text(
        json.dumps(
            {
                "data": data,
                "metrics": {k: v.metrics for k, v in results.items()},
                "comparisons": [c.__dict__ for c in comparisons],
                "predictions": {k: v.predictions for k, v in results.items()},
            },
            indent=2,
        )
    )
    _plot(out_dir / "comparison.png", results)
    return report


def _plot(path: Path, results: dict[str, EvalResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    width = 0.4
    for i, metric in enumerate(("exact_match", "rougeL")):
        values: list[Any] = [results[n].metrics.get(metric, 0.0) for n in names]
        ax.bar([x + (i - 0.5) * width for x in range(len(names))], values, width=width, label=metric)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("offline comparison")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
