"""Evaluation on the held-out split: loss/perplexity and generation metrics, base vs adapter.

Metrics work offline: exact match, ROUGE-L F1 (rouge-score), BLEU and chrF (sacrebleu), and,
when the references are JSON objects, per-field accuracy.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainer.baseline import KEY as PROMPTED
from trainer.data import Example
from trainer.distributed import Dist, unshard
from trainer.template import IGNORE, encode, prompt_ids


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[str] = field(default_factory=list)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _json_fields(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, ROUGE-L, BLEU, chrF (0-100 scale except EM/ROUGE in 0-1) and JSON field accuracy."""
    import sacrebleu
    from rouge_score import rouge_scorer

    n = len(references)
    if n == 0:
        return {}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    em = sum(_norm(p) == _norm(r) for p, r in zip(predictions, references, strict=True)) / n
    rouge = (
        sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)) / n
    )
    metrics = {
        "exact_match": em,
        "rougeL": rouge,
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }
    refs = [_json_fields(r) for r in references]
    if all(r is not None for r in refs):
        hits = total = 0
        for p, r in zip(predictions, refs, strict=True):
            pred = _json_fields(p) or {}
            assert r is not None
            total += len(r)
            hits += sum(pred.get(k) == v for k, v in r.items())
        metrics["field_accuracy"] = hits / total if total else 0.0
    return metrics


def eval_loss(
    model: Any, tokenizer: Any, examples: list[Example], max_seq_len: int, batch_size: int = 8
) -> float:
    """Mean token loss on completion tokens."""
    total, count = loss_sum(model, tokenizer, examples, max_seq_len, batch_size)
    return total / max(count, 1)


def loss_sum(
    model: Any, tokenizer: Any, examples: list[Example], max_seq_len: int, batch_size: int = 8
) -> tuple[float, int]:
    """Summed token loss on completion tokens and the number of those tokens."""
    import torch

    total, count = 0.0, 0
    model.eval()
    rows = [encode(tokenizer, ex, max_seq_len) for ex in examples]
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            width = max(len(r.input_ids) for r in chunk)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([r.input_ids + [pad] * (width - len(r.input_ids)) for r in chunk])
            labels = torch.tensor([r.labels + [IGNORE] * (width - len(r.labels)) for r in chunk])
            mask = (
                torch.arange(width)[None, :] < torch.tensor([len(r.input_ids) for r in chunk])[:, None]
            ).long()
            ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += loss.item()
            count += int((target != IGNORE).sum())
    return total, count


def generate(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = 16,
    logits_processor: Callable[[], list[Any]] | None = None,
) -> list[str]:
    """Greedy generation, batched with left padding; `logits_processor()` gives each batch fresh
    processors (e.g. xgrammar's, which keep per-row state)."""
    import torch

    model.eval()
    out: list[str] = []
    pad = tokenizer.pad_token_id
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    eos_ids = [i for i in {tokenizer.eos_token_id, eos} if i is not None]
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            prompts = [prompt_ids(tokenizer, ex) for ex in examples[i : i + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            gen = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos_ids,
                logits_processor=logits_processor() if logits_processor else None,
            )
            for row in gen[:, width:]:
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


@dataclass
class Outputs:
    """One model's raw output on some rows: summed completion-token loss, its token count, the
    generated answers; what a rank hands back from its shard of the held-out rows."""

    loss_sum: float
    tokens: int
    predictions: list[str]


def model_outputs(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_seq_len: int,
    max_new_tokens: int,
    batch_size: int,
) -> Outputs:
    total, count = loss_sum(model, tokenizer, examples, max_seq_len)
    return Outputs(total, count, generate(model, tokenizer, examples, max_new_tokens, batch_size))


def scored(outputs: Outputs, examples: list[Example]) -> EvalResult:
    """Loss, perplexity and the text metrics of `outputs` (in the order of `examples`)."""
    loss = outputs.loss_sum / max(outputs.tokens, 1)
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    metrics.update(text_metrics(outputs.predictions, [ex.completion for ex in examples]))
    return EvalResult(metrics, outputs.predictions)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_seq_len: int,
    max_new_tokens: int,
    batch_size: int,
) -> EvalResult:
    outputs = model_outputs(
        model,
        tokenizer,
        examples,
        max_seq_len=max_seq_len,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return scored(outputs, examples)


@contextlib.contextmanager
def base_only(model: Any) -> Iterator[None]:
    """Run a PeftModel as its base model (adapter disabled) inside the block."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def evaluate_base_and_adapter(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_seq_len: int,
    max_new_tokens: int,
    batch_size: int,
    with_base: bool = True,
    prompted: list[Example] | None = None,
    dist: Dist | None = None,
) -> dict[str, EvalResult]:
    """Evaluate the adapter and (optionally) the base model on the same rows; with `prompted`
    (the rows as `eval.baseline` prompts them), the base on those too, scored against the same
    references as `prompted` (trainer.baseline.KEY), between `base` and `adapter`.

    In a distributed run each rank takes its share of the rows (`Dist.shard`), rank 0 gathers the
    shares, checks that every row came back exactly once and scores them; other ranks get `{}`.
    """
    dist = dist or Dist()
    mine = dist.shard(examples)
    rows = [examples[i] for i in mine]
    kwargs = {"max_seq_len": max_seq_len, "max_new_tokens": max_new_tokens, "batch_size": batch_size}

    def shard() -> tuple[list[int], dict[str, Outputs]]:
        out = {}
        with base_only(model):
            if with_base:
                out["base"] = model_outputs(model, tokenizer, rows, **kwargs)
            if prompted is not None:
                out[PROMPTED] = model_outputs(model, tokenizer, [prompted[i] for i in mine], **kwargs)
        out["adapter"] = model_outputs(model, tokenizer, rows, **kwargs)
        return mine, out

    parts = dist.gather_results(shard)
    if not dist.is_main:
        return {}
    results = {}
    for side in parts[0][1]:
        predictions = unshard(
            [list(zip(idx, out[side].predictions, strict=True)) for idx, out in parts], len(examples)
        )
        total = Outputs(
            sum(out[side].loss_sum for _, out in parts),
            sum(out[side].tokens for _, out in parts),
            predictions,
        )
        results[side] = scored(total, examples)
    return results
