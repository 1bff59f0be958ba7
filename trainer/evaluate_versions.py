"""Evaluate registry versions (and `base`) on the same rows, in this process or through a server.

Used by `platform eval REF... --data FILE`; the scores are compared in `trainer/compare.py`.
"""

from __future__ import annotations

from trainer.data import Example, load_examples
from trainer.evaluate import EvalResult, base_only, evaluate_model


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
) -> tuple[dict[str, EvalResult], list[Example]]:
    examples, _, _ = load_examples(data)
    if max_examples:
        examples = examples[:max_examples]
    if server:
        from trainer.compare import via_server

        return {r: via_server(server, r, examples, max_new_tokens) for r in refs}, examples
    from trainer.loading import BASE, attach, resolve_adapters
    from trainer.model import load_base, load_tokenizer

    base, versions = resolve_adapters(refs, registry_root)
    tokenizer = load_tokenizer(base)
    model = attach(load_base(base), versions)
    kwargs = {"max_seq_len": max_seq_len, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    results: dict[str, EvalResult] = {}
    for v in versions:
        if v is None:
            with base_only(model):
                results[BASE] = evaluate_model(model, tokenizer, examples, **kwargs)
        else:
            model.set_adapter(v.ref)
            results[v.ref] = evaluate_model(model, tokenizer, examples, **kwargs)
    return results, examples
