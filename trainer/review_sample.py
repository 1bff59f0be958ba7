"""Prompts for a human review: a diverse, deduplicated sample, and both versions' answers to it.

`platform review create` picks the sample here (stratified by prompt length, or by a field of the
data rows, then round-robin over the strata so that short and long prompts, or every category,
are all represented), and generates the answers with the same code as `platform eval`: greedy, in
this process (transformers + peft, `trainer.evaluate.generate`) or through a running server.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from registry.reviews import NewItem
from trainer.data import Example
from trainer.errors import TrainerError

LENGTH = "length"
LENGTH_BINS = ("short", "medium", "long", "very long")


@dataclass(frozen=True)
class Sampled:
    example: Example
    stratum: str


def diverse_sample(examples: list[Example], n: int, by: str = LENGTH, seed: int = 0) -> list[Sampled]:
    """Up to `n` rows with distinct prompts, spread over strata (length quartiles, or values of
    the field `by`); the same data and seed give the same sample."""
    unique: dict[str, Example] = {}
    for ex in examples:
        unique.setdefault(" ".join(ex.prompt_key.lower().split()), ex)
    rows = list(unique.values())
    strata = _by_length(rows) if by == LENGTH else _by_field(rows, by)
    rng = random.Random(seed)
    queues = []
    for name in sorted(strata):
        members = strata[name][:]
        rng.shuffle(members)
        queues.append([(name, ex) for ex in members])
    picked: list[Sampled] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                name, ex = q.pop()
                picked.append(Sampled(ex, name))
    return picked


def _by_length(rows: list[Example]) -> dict[str, list[Example]]:
    lengths = sorted(len(ex.prompt_key) for ex in rows)
    cuts = [lengths[len(lengths) * q // 4] for q in (1, 2, 3)] if lengths else []
    strata: dict[str, list[Example]] = {}
    for ex in rows:
        size = len(ex.prompt_key)
        strata.setdefault(LENGTH_BINS[sum(size >= c for c in cuts)], []).append(ex)
    return strata


def _by_field(rows: list[Example], field: str) -> dict[str, list[Example]]:
    """Group rows by the value of `field` in their JSONL line (`Example.source` is `file:line`)."""
    cache: dict[str, list[str]] = {}
    strata: dict[str, list[Example]] = {}
    for ex in rows:
        path, _, line = ex.source.rpartition(":")
        if not path or not line.isdigit():
            raise TrainerError(
                f"--stratify {field}: rows from {ex.source or 'this source'} have no fields to read"
            )
        if path not in cache:
            cache[path] = Path(path).read_text().splitlines()
        row = json.loads(cache[path][int(line) - 1])
        if field not in row:
            raise TrainerError(f"--stratify {field}: {ex.source} has no field {field!r}")
        strata.setdefault(str(row[field]), []).append(ex)
    return strata


def generate_answers(
    refs: list[str],
    examples: list[Example],
    registry_root: str | None,
    *,
    server: str | None = None,
    api_key: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> dict[str, list[str]]:
    """Each version's greedy answer to every example (in order), like `platform eval` produces them."""
    if server:
        from trainer.compare import via_server

        return {r: via_server(server, r, examples, max_new_tokens, api_key).predictions for r in refs}
    from trainer.evaluate import generate
    from trainer.loading import attach, resolve_adapters
    from trainer.model import load_base, load_tokenizer

    base, versions = resolve_adapters(refs, registry_root)
    tokenizer = load_tokenizer(base)
    model = attach(load_base(base), versions)
    out: dict[str, list[str]] = {}
    for v in versions:
        assert v is not None
        model.set_adapter(v.ref)
        out[v.ref] = generate(model, tokenizer, examples, max_new_tokens, batch_size)
    return out


def build_items(
    examples: list[Example],
    refs: tuple[str, str],
    registry_root: str | None,
    *,
    samples: int,
    stratify: str = LENGTH,
    seed: int = 0,
    server: str | None = None,
    max_new_tokens: int = 256,
) -> list[NewItem]:
    """The review items: a diverse sample, both versions' answers, sides drawn at random."""
    picked = diverse_sample(examples, samples, stratify, seed)
    if not picked:
        raise TrainerError("no rows to review: the data is empty")
    answers = generate_answers(
        list(refs), [p.example for p in picked], registry_root, server=server, max_new_tokens=max_new_tokens
    )
    rng = random.Random(seed + 1)
    return [
        NewItem(
            p.example.prompt_messages, answers[refs[0]][i], answers[refs[1]][i], rng.random() < 0.5, p.stratum
        )
        for i, p in enumerate(picked)
    ]
