"""Packing keeps rows apart: a packed batch gives every row the loss it has on its own."""

from __future__ import annotations

from typing import Any

import pytest

from trainer.data import prepare
from trainer.template import IGNORE, Encoded, encode, pack


@pytest.fixture(scope="module")
def tiny_rows(tiny_base: Any) -> tuple[Any, list[Encoded]]:
    from trainer.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    splits, _ = prepare("sample:support-tickets")
    return tokenizer, [encode(tokenizer, ex, 256) for ex in splits["train"][:7]]


def row_losses(logits: Any, labels: Any) -> Any:
    """Mean next-token loss per row of completion tokens, as the model's own loss shifts them."""
    import torch

    losses = torch.nn.functional.cross_entropy(
        logits[:-1].float(), labels[1:], ignore_index=IGNORE, reduction="none"
    )
    mask = labels[1:] != IGNORE
    return losses[mask].mean()


def test_pack_places_every_row_once_within_max_seq_len(tiny_rows: tuple[Any, list[Encoded]]) -> None:
    _, rows = tiny_rows
    blocks = pack(rows, 256)
    assert sorted(id(r) for b in blocks for r in b) == sorted(id(r) for r in rows)
    assert all(sum(len(r.input_ids) for r in b) <= 256 for b in blocks)
    assert len(blocks) < len(rows)  # short rows do share blocks


def test_packed_rows_have_the_losses_they_have_unpacked(
    tiny_base: Any, tiny_rows: tuple[Any, list[Encoded]]
) -> None:
    import torch

    from trainer.model import load_base, without_kv_cache
    from trainer.packing import BlockDataset, Collator

    tokenizer, rows = tiny_rows
    blocks = pack(rows, 400)
    assert max(len(b) for b in blocks) >= 3  # several rows share a block
    model = load_base(tiny_base, attn_implementation="sdpa").eval()
    batch = Collator(tokenizer.pad_token_id)([BlockDataset(blocks)[i] for i in range(len(blocks))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == len(blocks)
    with torch.no_grad(), without_kv_cache(model):
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        compared = 0
        for b, block in enumerate(blocks):
            start = 0
            for row in block:
                end = start + len(row.input_ids)
                alone = model(input_ids=torch.tensor([row.input_ids])).logits[0]
                labels = torch.tensor(row.labels)
                packed = row_losses(logits[b, start:end], labels)
                assert abs(packed.item() - row_losses(alone, labels).item()) < 1e-4, (b, start)
                # the batch's labels ignore the first token of each row (the boundary)
                assert batch["labels"][b, start].item() == IGNORE
                start, compared = end, compared + 1
    assert compared == len(rows)


def test_training_with_packing_runs_on_blocks(tmp_path: Any) -> None:
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    recipe = LoRARecipe(
        load_config(
            None,
            [
                "base_model=tiny",
                "data.packing=true",
                "data.max_seq_len=512",
                "training.max_steps=1",
                "training.batch_size=2",
                "training.grad_accum=1",
                f"output_dir={tmp_path}",
            ],
        ),
        Console(quiet=True),
    )
    recipe.setup()
    assert recipe.plan.items == len(recipe.train_items) < len(recipe.train_rows) / 3  # ~4+ rows a block
    recipe.train()
    assert recipe.steps == 1


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_completion_only_logits_give_the_full_loss_and_gradients(
    tiny_base: Any, tiny_rows: tuple[Any, list[Encoded]], packed: bool
) -> None:
    """The collator's `logits_to_keep` (completion positions only) changes neither the loss nor the
    LoRA gradients a training step takes, while the head computes far fewer positions."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.model import load_base, without_kv_cache
    from trainer.packing import Collator, dataset, takes_completion_logits

    tokenizer, rows = tiny_rows
    items: list[Any] = pack(rows, 400) if packed else rows
    ds = dataset(items, packed)
    torch.manual_seed(0)
    base = load_base(tiny_base, attn_implementation="sdpa")
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    assert takes_completion_logits(model)
    full = Collator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    kept = Collator(tokenizer.pad_token_id, completion_logits=True)([ds[i] for i in range(len(ds))])

    def loss_and_grads(batch: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
        model.zero_grad()
        with without_kv_cache(model):
            out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return out.loss.detach(), out.logits.shape, grads

    full_loss, full_shape, full_grads = loss_and_grads(full)
    kept_loss, kept_shape, kept_grads = loss_and_grads(kept)
    assert abs(full_loss.item() - kept_loss.item()) < 1e-5
    for a, b in zip(full_grads, kept_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert kept_shape[1] < full_shape[1] / 2  # the head ran on under half the positions


@pytest.mark.parametrize("grouped", [True, False])
def test_rows_of_similar_length_share_a_batch_so_little_is_padding(grouped: bool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """training.group_by_length (padded rows): the Trainer's batches, built from the run's arguments
    and collator, waste under half the padding of random batches on rows of widely spread lengths."""
    import random

    import torch

    from tests.trainer.support import fixed_plan
    from trainer.arguments import training_arguments
    from trainer.config import TrainingSettings
    from trainer.packing import Collator, RowDataset
    from trainer.sampling import GroupedTrainer, row_lengths

    rng = random.Random(0)
    rows = [
        Encoded([5] * n, [IGNORE] * (n // 2) + [5] * (n - n // 2), False)
        for n in (rng.randint(8, 400) for _ in range(400))
    ]
    plan = fixed_plan(400, 0)

    def padding(group_by_length: bool) -> float:
        t = TrainingSettings(batch_size=8, group_by_length=group_by_length)
        trainer = GroupedTrainer(  # as the recipe builds it
            model=torch.nn.Linear(1, 1),
            args=training_arguments(t, plan, tmp_path / str(group_by_length)),
            train_dataset=RowDataset(rows),
            data_collator=Collator(0),
            lengths=row_lengths(rows, t.group_by_length, padded=True),
        )
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(rows)  # every row once
        return sum(float((b["attention_mask"] == 0).sum()) for b in batches) / sum(
            b["attention_mask"].numel() for b in batches
        )

    if grouped:
        assert padding(True) < 0.5 * padding(False)
    else:  # grouping is for padded rows only: packed blocks are full, padding-free batches have no padding
        t = TrainingSettings(group_by_length=True)
        assert training_arguments(t, plan, tmp_path, padded=False).train_sampling_strategy == "random"
        assert row_lengths(rows, t.group_by_length, padded=False) is None
        assert not TrainingSettings().group_by_length  # the default is padding-free random batches


@pytest.mark.parametrize("completion_logits", [False, True], ids=["all-logits", "completion-logits"])
def test_padding_free_batch_has_the_loss_and_gradients_of_the_padded_batch(
    tiny_base: Any, tiny_rows: tuple[Any, list[Encoded]], completion_logits: bool
) -> None:
    """training.padding_free: the rows laid end to end in one sequence, with row_attention, give the
    padded batch's loss and LoRA gradients (no row sees another), with no position spent on padding."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.model import load_base, without_kv_cache
    from trainer.packing import ROW_ATTENTION, Collator, RowDataset, use_row_attention

    tokenizer, rows = tiny_rows
    items = [RowDataset(rows)[i] for i in range(len(rows))]
    torch.manual_seed(0)
    base = load_base(tiny_base, attn_implementation="sdpa")
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    padded = Collator(tokenizer.pad_token_id, completion_logits)(items)
    flat = Collator(tokenizer.pad_token_id, completion_logits, padding_free=True)(items)
    assert flat["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows))
    assert padded["input_ids"].numel() > flat["input_ids"].numel()  # the padded batch pads

    def loss_and_grads(batch: dict[str, Any]) -> tuple[float, list[Any]]:
        model.zero_grad()
        with without_kv_cache(model):
            out = model(**batch)
        out.loss.backward()
        return out.loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    padded_loss, padded_grads = loss_and_grads(padded)
    assert use_row_attention(base) and base.config._attn_implementation == ROW_ATTENTION
    flat_loss, flat_grads = loss_and_grads(flat)
    assert abs(padded_loss - flat_loss) < 1e-4
    for a, b in zip(padded_grads, flat_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # generation and unflattened batches still work under row_attention (transformers' sdpa)
    with torch.no_grad():
        again = model(**padded).loss.item()
    assert abs(again - padded_loss) < 1e-4


def test_grouped_batches_come_in_random_order_not_longest_first() -> None:
    """transformers' LengthGroupedSampler sorts each group of batches longest first (a short run: 4
    groups), so a run sweeps from long rows to short ones again and again (on this draw 92% of the
    batches are no longer than the one before). Grouped batches here are padded as little, in an
    order unrelated to their length, the same for the same epoch and new for the next."""
    import itertools
    import random
    import statistics

    from trainer.sampling import ShuffledLengthGroups

    rng = random.Random(1)
    lengths = [rng.randint(8, 400) for _ in range(320)]  # 40 batches of 8: one group
    sampler = ShuffledLengthGroups(lengths, batch_size=8, seed=42)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))  # every row once
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    longest = [max(lengths[i] for i in b) for b in batches]
    # grouped: each batch's rows are neighbours in length
    assert statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) < 30
    # no sweeps: a batch is no longer than the one before about half the time, as in random order
    assert sum(b <= a for a, b in itertools.pairwise(longest)) / (len(longest) - 1) < 0.7
    assert list(sampler) == order  # the same epoch: the same order (a resumed run skips exactly)
    sampler.set_epoch(1)
    assert list(sampler) != order
