"""Evaluate registry versions (and `base`) on the same rows, in this process or through a server.

Used by `platform eval REF... --data FILE` (the scores are compared in `trainer/compare.py`) and
`platform eval REF... --general`. A ref may carry a prompting after `+`, as `eval.baseline`
spells it: `base+few_shot:4`, `base+few_shot` (as many as fit `max_seq_len`),
`support@3+system:prompt.txt`. The shots come from `shots` (a training file), else from the
first rows of `data`, which are then left out of the evaluation of every ref.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.baseline import MAX_AUTO_SHOTS, Baseline, Prompting, parse_baseline, prompting
from trainer.data import Example, load_examples
from trainer.evaluate import EvalResult, base_only, evaluate_model
from trainer.general import Item, answers, load_items, score


@dataclass(frozen=True)
class Target:
    """One ref of the command line: the model it runs and the prompting it is given."""

    ref: str
    model: str
    baseline: Baseline | None


def targets(refs: list[str]) -> list[Target]:
    """`name@3`, `base`, `base+few_shot:4`... (raises BaselineError on a bad prompting)."""
    out = []
    for ref in refs:
        model, plus, spec = ref.partition("+")
        out.append(Target(ref, model, parse_baseline(spec) if plus else None))
    return out


def _shot_pool(ts: list[Target], examples: list[Example], shots: str | None) -> tuple[list[Example], int]:
    """(the rows shots are drawn from, how many leading rows of `examples` they take away)."""
    wanted = [t.baseline for t in ts if t.baseline is not None and t.baseline.mode == "few_shot"]
    if not wanted:
        return [], 0
    if shots:
        return load_examples(shots)[0], 0
    n = max([MAX_AUTO_SHOTS * 2, *(b.shots or 0 for b in wanted)])
    return examples[:n], n


class _Models:
    """The base model's tokenizer, and (in-process only) the model with every version attached."""

    def __init__(self, ts: list[Target], registry_root: str | None) -> None:
        from trainer.loading import resolve_adapters
        from trainer.model import load_tokenizer

        self.refs = list(dict.fromkeys(t.model for t in ts))
        self.base, self.versions = resolve_adapters(self.refs, registry_root)
        self.tokenizer = load_tokenizer(self.base)
        self.model: Any = None

    def load(self) -> None:
        from trainer.loading import attach
        from trainer.model import load_base

        self.model = attach(load_base(self.base), self.versions)

    def run(self, target: Target, fn: Any) -> Any:
        """fn() with the target's model active (`base`: adapters disabled)."""
        from trainer.loading import BASE

        if target.model == BASE:
            with base_only(self.model):
                return fn()
        self.model.set_adapter(target.model)
        return fn()

    def prompting(
        self,
        t: Target,
        pool: list[Example],
        rows: list[Example],
        max_seq_len: int,
        max_new_tokens: int,
        seed: int,
    ) -> Prompting | None:
        """The target's prompting; `few_shot` without K fits its shots into what `rows` leave of max_seq_len."""
        from trainer.template import encode, prompt_ids

        if t.baseline is None:
            return None
        if t.baseline.mode != "few_shot":
            return prompting(t.baseline, pool, [], 0, seed)
        longest = max((len(prompt_ids(self.tokenizer, ex)) for ex in rows), default=0)
        lengths = [encode(self.tokenizer, ex, max_seq_len).length for ex in pool]
        return prompting(t.baseline, pool, lengths, max_seq_len - longest - max_new_tokens, seed)


def evaluate_refs(
    refs: list[str],
    data: str,
    registry_root: str | None,
    *,
    max_examples: int = 0,
    max_new_tokens: int = 64,
    max_seq_len: int = 512,
    batch_size: int = 16,
    server: str | None = None,
    shots: str | None = None,
    seed: int = 42,
) -> tuple[dict[str, EvalResult], list[Example]]:
    """Every ref on the same rows of `data` (less the rows shots were drawn from)."""
    ts = targets(refs)
    examples, _, _ = load_examples(data)
    pool, taken = _shot_pool(ts, examples, shots)
    examples = examples[taken:]
    if max_examples:
        examples = examples[:max_examples]
    if server and all(t.baseline is None for t in ts):
        # the server resolves the refs: nothing to load here (the registry may be the server's only)
        from trainer.compare import via_server

        return {t.ref: via_server(server, t.model, examples, max_new_tokens) for t in ts}, examples
    models = _Models(ts, registry_root)  # a prompting fits its shots with the base's tokenizer
    promptings = {t.ref: models.prompting(t, pool, examples, max_seq_len, max_new_tokens, seed) for t in ts}

    def rows(t: Target) -> list[Example]:
        p = promptings[t.ref]
        return [p.apply(ex) for ex in examples] if p else examples

    if server:
        from trainer.compare import via_server

        return {t.ref: via_server(server, t.model, rows(t), max_new_tokens) for t in ts}, examples
    models.load()
    kwargs = {"max_seq_len": max_seq_len, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    results = {
        t.ref: models.run(t, lambda t=t: evaluate_model(models.model, models.tokenizer, rows(t), **kwargs))
        for t in ts
    }
    return results, examples


def general_answers(
    refs: list[str], registry_root: str | None, *, max_examples: int = 0, batch_size: int = 16
) -> tuple[dict[str, list[str]], list[Item]]:
    """Every ref's answers to the shipped general set (its first `max_examples` items; 0: all).

    A `+system:FILE` prompting applies; few-shot shots are task rows, so `+few_shot` does not.
    """
    ts = targets(refs)
    items = load_items(max_examples)
    models = _Models(ts, registry_root)
    models.load()
    out = {}
    for t in ts:
        system = t.baseline if t.baseline is not None and t.baseline.mode == "system" else None
        p = prompting(system, [], [], 0, 0) if system else None
        out[t.ref] = models.run(t, lambda p=p: answers(models.model, models.tokenizer, items, batch_size, p))
    return out, items


def general_refs(
    refs: list[str], registry_root: str | None, *, max_examples: int = 0, batch_size: int = 16
) -> tuple[dict[str, dict[str, float]], list[Item]]:
    """Every ref's score on the shipped general set, as `general_answers` answers it."""
    said, items = general_answers(refs, registry_root, max_examples=max_examples, batch_size=batch_size)
    return {ref: score(predictions, items) for ref, predictions in said.items()}, items
