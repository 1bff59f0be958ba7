"""Model card (README.md) in the Hugging Face convention: YAML front matter + a short body."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from registry.adapter import AdapterInfo


def card_text(name: str, version: int, lineage: dict[str, Any], info: AdapterInfo) -> str:
    metrics = lineage.get("metrics", {}).get("adapter", {})
    front = {
        "base_model": lineage.get("base_model"),
        "library_name": "peft",
        "tags": ["lora", "lora-platform"],
        "model-index": [
            {
                "name": f"{name}@{version}",
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "metrics": [{"type": k, "value": round(float(v), 4)} for k, v in metrics.items()],
                    }
                ],
            }
        ],
    }
    data = lineage.get("dataset", {})
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {name}@{version}",
        "",
        f"LoRA adapter (r={info.rank}, alpha={info.alpha:g}, targets: {', '.join(info.target_modules)}) "
        f"for `{lineage.get('base_model')}` (weights sha256 `{str(lineage.get('base_model_sha256'))[:12]}...`).",
        "",
        f"- dataset: `{data.get('source', '?')}` sha256 `{str(data.get('sha256', '?'))[:12]}...`, "
        f"splits {data.get('splits', {})}",
        f"- parent version: {lineage.get('parent') or 'none'}",
        f"- created: {lineage.get('created', '?')}",
    ]
    lines += _evaluation_lines(lineage)
    lines += mix_lines(lineage.get("data_mix"), (lineage.get("baseline") or {}).get("label"))
    objective = lineage.get("objective")
    if isinstance(objective, dict):
        lines += [
            "",
            f"Trained with {objective.get('name')} (beta {objective.get('beta')}) against "
            f"the reference {objective.get('reference')}.",
        ]
    warnings = (lineage.get("training") or {}).get("warnings") or []
    if warnings:
        lines += ["", "## Training warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _evaluation_lines(lineage: dict[str, Any]) -> list[str]:
    """The held-out table (base, prompted base, adapter), the verdict and the general-set scores."""
    all_metrics = lineage.get("metrics", {})
    metrics = all_metrics.get("adapter", {})
    baseline = lineage.get("baseline") or {}
    sides = [("base", "base")]
    if "prompted" in all_metrics:
        sides.append(("prompted", str(baseline.get("label", "prompted base"))))
    lines: list[str] = []
    if metrics:
        header = " | ".join(label for _, label in sides)
        lines += ["", f"| metric | {header} | adapter |", "|---|" + "---|" * (len(sides) + 1)]
        for k, v in metrics.items():
            cells = " | ".join(f"{all_metrics.get(side, {}).get(k, float('nan')):.4f}" for side, _ in sides)
            lines.append(f"| {k} | {cells} | {v:.4f} |")
    if baseline.get("verdict"):
        lines += ["", f"Against the prompted base ({baseline.get('setting')}): {baseline['verdict']}."]
    general = lineage.get("general") or {}
    if "base" in general and "adapter" in general:
        lines += [
            "",
            f"General-capability set ({general.get('items')} items, exact match): "
            f"base {general['base'].get('general', 0.0):.4f}, adapter {general['adapter'].get('general', 0.0):.4f}.",
        ]
    return lines


def mix_lines(mix: dict[str, Any] | None, prompted: str | None = None) -> list[str]:
    """`data.mix`: each source's weight and rows drawn, and its held-out exact match / ROUGE-L
    (the prompted base's side named `prompted`)."""
    if not mix:
        return []
    lines = ["", f"## Data mix (seed {mix.get('seed')})", "", "| source | weight | rows drawn | sha256 |"]
    lines.append("|---|---|---|---|")
    for s in mix.get("sources", []):
        sha = str(s.get("sha256", "?"))[:12]
        lines.append(f"| `{s['path']}` | {s['weight']:g} | {s['sampled']} of {s['available']} | `{sha}...` |")
    per_source = mix.get("heldout_metrics") or {}
    if per_source:
        lines += ["", "| held-out source | rows | side | exact_match | rougeL |", "|---|---|---|---|---|"]
        for source, sides in per_source.items():
            for side, m in sides.items():
                em, rouge = m.get("exact_match", float("nan")), m.get("rougeL", float("nan"))
                label = (prompted or side) if side == "prompted" else side
                lines.append(f"| `{source}` | {int(m.get('rows', 0))} | {label} | {em:.4f} | {rouge:.4f} |")
    return lines


def write_card(path: Path, name: str, version: int, lineage: dict[str, Any], info: AdapterInfo) -> None:
    path.write_text(card_text(name, version, lineage, info))


def review_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """One line per human review of a version (`ReviewStore.summaries_for`), for the card
    and `registry show`: the other version's win rate against it turned into this version's."""
    lines = []
    for s in summaries:
        rate, low, high = s.get("win_rate_b"), s.get("win_rate_low"), s.get("win_rate_high")
        if rate is None or low is None or high is None:
            continue
        if s["role"] == "a":  # stored as B's win rate over A: this version is A
            rate, low, high = 1 - rate, 1 - high, 1 - low
        alpha = "undefined" if s.get("alpha") is None else f"{s['alpha']:.2f}"
        lines.append(
            f"review {s['review']}: preferred over {s['against']} {100 * rate:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}] (ties half), {s.get('ratings')} ratings, "
            f"{s.get('reviewers')} reviewer(s), agreement alpha {alpha}"
        )
    return lines


def rollout_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    """One line per rollout that had this version as its candidate (`RolloutStore.outcomes_for`)."""
    lines = []
    for o in outcomes:
        line = f"rollout {o['rollout']}: {o['outcome'].replace('_', ' ')}"
        if o.get("baseline"):
            line += f" against {o['baseline']}"
        if o.get("ended"):
            line += f" on {datetime.fromtimestamp(o['ended'], UTC).isoformat(timespec='seconds')}"
        if o.get("reason"):
            line += f": {o['reason']}"
        lines.append(line)
    return lines


def evaluation_lines(evaluations: list[dict[str, Any]]) -> list[str]:
    """One line per task of each evaluation made after the push (`EvaluationStore.for_version`)."""
    lines = []
    for e in evaluations:
        when = datetime.fromtimestamp(e["created"], UTC).isoformat(timespec="seconds")
        how = f"{e['kind']} {e.get('harness_version', '')}".strip() + f", {e.get('mode', '?')}, {when}"
        for task, metrics in (e.get("results") or {}).items():
            stderr = (e.get("stderr") or {}).get(task, {})
            shown = ", ".join(
                f"{k} {v:.4f}" + (f" (±{stderr[k]:.4f})" if isinstance(stderr.get(k), float) else "")
                for k, v in metrics.items()
                if isinstance(v, int | float)
            )
            n = (e.get("samples") or {}).get(task)
            lines.append(f"{task}: {shown}" + (f" on {n} samples" if n else "") + f" ({how})")
    return lines


def with_records(
    card: str,
    summaries: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
    evaluations: list[dict[str, Any]] | None = None,
) -> str:
    """The model card with "Human review", "Rollouts" and "Evaluations" sections (the stored card
    is immutable: the sections are added where the card is shown or published)."""
    for title, lines in (
        ("Human review", review_lines(summaries)),
        ("Rollouts", rollout_lines(outcomes)),
        ("Evaluations", evaluation_lines(evaluations or [])),
    ):
        if lines:
            card = card.rstrip("\n") + f"\n\n## {title}\n\n" + "\n".join(f"- {x}" for x in lines) + "\n"
    return card
