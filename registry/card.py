"""Model card (README.md) in the Hugging Face convention: YAML front matter + a short body."""

from __future__ import annotations

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
    base = lineage.get("metrics", {}).get("base", {})
    if metrics:
        lines += ["", "| metric | base | adapter |", "|---|---|---|"]
        lines += [f"| {k} | {base.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def write_card(path: Path, name: str, version: int, lineage: dict[str, Any], info: AdapterInfo) -> None:
    path.write_text(card_text(name, version, lineage, info))
