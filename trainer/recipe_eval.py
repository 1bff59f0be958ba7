"""The recipe's held-out evaluation (a mixin of `trainer.recipe.LoRARecipe`): base, prompted base
and adapter on the held-out rows, the general set, and the per-source metrics of a `data.mix`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trainer.baseline import Prompting, parse_baseline, prompting
from trainer.evaluate import EvalResult, evaluate_base_and_adapter
from trainer.general import METRIC as GENERAL
from trainer.general import general_base_and_adapter, load_items
from trainer.mix import per_source_metrics
from trainer.template import prompt_ids

if TYPE_CHECKING:
    from rich.console import Console

    from trainer.config import TrainConfig
    from trainer.data import Example
    from trainer.distributed import Dist
    from trainer.hygiene import Splits
    from trainer.mix import MixReport
    from trainer.template import Encoded


class RecipeEvaluation:
    """Evaluation steps over the state the recipe's setup and training leave."""

    config: TrainConfig
    dist: Dist
    console: Console
    model: Any
    tokenizer: Any
    splits: Splits
    mix: MixReport | None
    train_lengths: list[int]
    results: dict[str, EvalResult]
    eval_rows: list[Example]
    prompting: Prompting | None
    general: dict[str, dict[str, float]]
    general_items: int

    def _encode(self, examples: Sequence[Example]) -> list[Encoded]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, EvalResult]:
        """Base, prompted base (`eval.baseline`) and adapter on the held-out rows, then base and
        adapter on the general set; each rank generates for its share of the rows and items, rank 0
        gathers them (the other ranks get no results)."""
        e, d = self.config.eval, self.config.data
        held_out = self.splits["test"] or self.splits["val"]
        rows = list(held_out[: e.max_examples] if e.max_examples else held_out)
        self.eval_rows = rows
        self.results = {}
        if rows:
            prompted = self._prompted_rows(rows) if e.compare_base else None
            if self.dist.is_main:
                shared = f" across {self.dist.world_size} processes" if self.dist.is_distributed else ""
                self.console.print(
                    f"[bold]evaluating[/] on {len(rows)} held-out rows (base and adapter){shared}"
                )
            self.results = evaluate_base_and_adapter(
                self.model,
                self.tokenizer,
                rows,
                max_seq_len=d.max_seq_len,
                max_new_tokens=e.max_new_tokens,
                batch_size=e.batch_size,
                with_base=e.compare_base,
                prompted=prompted,
                dist=self.dist,
            )
        if e.general_max_examples and e.compare_base:
            self._evaluate_general(e.general_max_examples, e.batch_size)
        return self.results

    def _prompted_rows(self, rows: list[Example]) -> list[Example] | None:
        """`rows` with `eval.baseline`'s prompting (shots from the training split), or None when
        there is none (zero_shot, or no shot fits); the same on every rank (same rows, same seed)."""
        e, d = self.config.eval, self.config.data
        train = self.splits["train"]
        lengths = self.train_lengths
        if len(lengths) != len(train):  # recipes with their own setup (trainer/preference.py)
            lengths = [r.length for r in self._encode(train)]
        longest = max(len(prompt_ids(self.tokenizer, ex)) for ex in rows)
        budget = d.max_seq_len - longest - e.max_new_tokens
        p = prompting(parse_baseline(e.baseline), train, lengths, budget, self.config.training.seed)
        self.prompting = p
        if p is None or (p.system is None and not p.shots):
            return None
        if self.dist.is_main:
            self.console.print(
                f"[bold]evaluating[/] {p.label} too (the base prompted: {p.note or p.setting})"
            )
        return [p.apply(ex) for ex in rows]

    def _evaluate_general(self, limit: int, batch_size: int) -> None:
        """The shipped general-capability set, base and adapter: what fine-tuning made it forget."""
        items = load_items(limit)
        self.general_items = len(items)
        if self.dist.is_main:
            self.console.print(f"[bold]general set[/]: {len(items)} items (base and adapter)")
        self.general = general_base_and_adapter(self.model, self.tokenizer, items, batch_size, self.dist)
        for side, scores in self.general.items():
            if side in self.results:
                self.results[side].metrics[GENERAL] = scores[GENERAL]

    def _mix_record(self) -> dict[str, Any] | None:
        """`data.mix`: what each source gave, and the held-out metrics per source."""
        if self.mix is None:
            return None
        which = self.mix.heldout["test" if len(self.splits["test"]) else "val"][: len(self.eval_rows)]
        predictions = {k: v.predictions for k, v in self.results.items()}
        metrics = per_source_metrics(self.eval_rows, predictions, self.mix.paths(which))
        return {**self.mix.record(), "heldout_metrics": metrics}
