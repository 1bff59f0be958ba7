"""Training-data hygiene: personal data counted and masked, near-duplicates reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.redact import count_pii, redact
from trainer.data import Example
from trainer.hygiene import check

TICKET = (
    "Hello, the blue backpack I ordered last week arrived with a torn strap and a broken zipper, "
    "and the box was crushed on one side. Could you send a replacement before my trip on Friday?"
)


def _ex(prompt: str, completion: str = "Ticket | shipping | damaged", source: str = "f:1") -> Example:
    return Example((("user", prompt),), completion, source)


@pytest.mark.parametrize(
    "text",
    [
        "write to jane.doe+tickets@example.co.uk or call +1 (555) 123-4567",
        "card 4111 1111 1111 1111, order 12, room 7",
        "no personal data here",
    ],
)
def test_same_patterns_as_the_payload_redactor(text: str) -> None:
    from serving.payloads import redact as payload_redact

    assert redact(text) == payload_redact(text)


def test_personal_data_counted_per_kind_and_masked_on_request() -> None:
    splits = {
        "train": [
            _ex("my mail is ann@example.com, phone 555-123-4567", source="f:1"),
            _ex("order 12 is late", source="f:2"),
        ],
        "val": [_ex("reach me at bob@example.org", "ok, bob@example.org", source="f:3")],
        "test": [],
    }
    kept, report = check(splits, redact_pii=False, threshold=0)
    assert report.pii == {"email": 3, "number": 1} and report.pii_rows == 2 and not report.redacted
    assert kept is splits and "data.redact=true" in report.summary()

    masked, report = check(splits, redact_pii=True, threshold=0)
    assert report.redacted and report.pii == {"email": 3, "number": 1}
    text = json.dumps([[ex.messages, ex.completion] for rows in masked.values() for ex in rows])
    assert "@" not in text and "4567" not in text and "order 12 is late" in text
    assert masked["val"][0].completion == "ok, [EMAIL]"
    assert sum(count_pii(ex.prompt_key + ex.completion).total() for ex in masked["train"]) == 0


def test_near_duplicates_are_reported_beside_exact_dedup() -> None:
    splits = {
        "train": [
            _ex(TICKET, source="f:1"),
            _ex(TICKET.replace("Friday", "Saturday"), source="f:2"),  # one word apart
            _ex("Please delete my account, I no longer use the printer, thanks a lot.", source="f:3"),
        ],
        "val": [_ex(TICKET.replace("Hello,", "Hi,"), source="f:4")],
        "test": [_ex("Where is my refund for the order I returned a month ago?", source="f:5")],
    }
    _, report = check(splits, redact_pii=False, threshold=0.7)
    assert report.near_duplicate_pairs == 1 and report.heldout_near_train == 1
    assert ["f:1", "f:2"] in report.examples and ["f:4", "f:1"] in report.examples
    assert "1 training pairs, 1 held-out rows near a training row" in report.summary()


def test_platform_train_masks_personal_data_before_training(tmp_path: Path) -> None:
    """data.redact=true: the rows the model trains on carry the masks, not the addresses."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    data = tmp_path / "rows.jsonl"
    rows = [
        {
            "prompt": f"Customer {i} writes from user{i}@example.com about order {10000 + i}",
            "completion": "ok",
        }
        for i in range(60)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        None,
        [
            "base_model=embedded/tiny-llama",
            f"data.path={data}",
            f"output_dir={tmp_path / 'runs'}",
            "data.redact=true",
        ],
    )
    console = Console(record=True, width=200)
    recipe = LoRARecipe(config, console)
    recipe.setup()
    assert "personal data: email 60, number 60 in 60 rows, masked (data.redact=true)" in console.export_text()
    decoded = recipe.tokenizer.decode(recipe.train_rows[0].input_ids)
    assert "[EMAIL]" in decoded and "[NUMBER]" in decoded and "@example.com" not in decoded
    assert recipe.hygiene.pii == {"email": 60, "number": 60}
