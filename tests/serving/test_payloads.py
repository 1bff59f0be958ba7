"""From production back to training, through a real server on the tiny model: opt-in payload
logging (redacted, kept for a retention period), feedback on logged completions, export of the
traffic to a training file, and a new version trained from the served one on it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.payloads import PayloadRecord
from registry.store import Registry
from tests.registry.reviewing import finish_review
from tests.serving.fixtures import Server, metric, running_server, train_tiny, wait_until
from trainer.data import prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logging_server(tmp_path_factory: pytest.TempPathFactory, tiny_base) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("payloads")
    registry = root / "registry"
    train_tiny(registry, root / "runs", "support", "sample:support-tickets", seed=1)
    env = {
        **os.environ,
        "LORA_PLATFORM_PAYLOAD_PURGE_INTERVAL_S": "0.5",
        "LORA_PLATFORM_DRIFT_INTERVAL_S": "0.5",
    }
    flags = [
        "--engine",
        "peft",
        "--dtype",
        "float32",
        "--max-lora-rank",
        "16",
    ]  # logging sits above the engine
    logging = ["--log-payloads", "support", "--payload-retention-days", "1"]
    yield from running_server(registry, root, *flags, *logging, env=env)


def _ask(server: Server, model: str, text: str) -> str:
    reply = server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0
    )
    return reply.id


def _logged(server: Server, completion_id: str) -> dict[str, object] | None:
    store = Registry(server.registry).payloads()
    found = [c for c in store.completions("support") if c.record.id == completion_id]
    return json.loads(found[0].record.request) | {"completion": found[0].record.completion} if found else None


def _feedback(server: Server, body: dict[str, object]) -> httpx.Response:
    return httpx.post(server.url + "/v1/feedback", json=body, timeout=10)


def test_logging_is_off_by_default_and_feedback_on_an_unlogged_completion_is_a_404(server: Server) -> None:
    completion_id = _ask(server, "support:prod", "Hello there")
    answer = _feedback(server, {"id": completion_id, "thumbs": "up"})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "id"
    assert Registry(server.registry).payloads().completions("support") == []


def test_logged_text_is_redacted_and_feedback_errors_are_openai_shaped(logging_server: Server) -> None:
    text = "Mail jane.doe@example.com or call +1 555 123 4567 about order 42."
    completion_id = _ask(logging_server, "support", text)
    wait_until(lambda: _logged(logging_server, completion_id) is not None, 10)
    row = _logged(logging_server, completion_id)
    assert row is not None
    stored = row["messages"][0]["content"]  # type: ignore[index]
    assert stored == "Mail [EMAIL] or call [NUMBER] about order 42."

    unknown = _feedback(logging_server, {"id": "chatcmpl-nope", "score": 1})
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    assert _feedback(logging_server, {"id": completion_id}).status_code == 400
    assert _feedback(logging_server, {"id": completion_id, "thumbs": "sideways"}).status_code == 400


def test_rows_past_retention_are_deleted_by_the_server(logging_server: Server) -> None:
    store = Registry(logging_server.registry).payloads()
    old = PayloadRecord(
        "chatcmpl-old",
        time.time() - 5 * 86400,
        "support",
        "support@1",
        '{"prompt": "x"}',
        "y",
        "stop",
        "ok",
        0.1,
        0.01,
        1,
        1,
    )
    store.insert([old])
    wait_until(lambda: not store.exists("chatcmpl-old"), 10)


def test_traffic_with_feedback_is_exported_and_trains_the_next_version_from_the_served_one(
    logging_server: Server, tmp_path: Path
) -> None:
    splits, _ = prepare("sample:support-tickets")
    prompts = [ex.messages[-1][1] for ex in splits["train"][:8]]
    held_out = splits["test"][0].messages[-1][1]
    liked = [_ask(logging_server, "support", p) for p in [*prompts[:6], prompts[0], held_out]]
    disliked = [_ask(logging_server, "support@1", p) for p in prompts[6:8]]
    _ask(logging_server, "support", "no feedback on this one")
    for cid in liked:
        assert _feedback(logging_server, {"id": cid, "thumbs": "up"}).json()["recorded"] is True
    for cid in disliked:
        assert _feedback(logging_server, {"id": cid, "thumbs": "down", "score": 0.1}).status_code == 200
    wait_until(lambda: all(_logged(logging_server, c) for c in liked + disliked), 10)
    drift = 'lora_drift_reference{signal="completion_tokens",version="support@1"}'
    wait_until(lambda: metric(logging_server.url, drift) > 0, 10)  # the drift gauges follow the log

    reg, out = str(logging_server.registry), tmp_path / "liked.jsonl"
    export = CliRunner().invoke(
        cli,
        [
            "data",
            "export",
            "support",
            "--thumbs",
            "up",
            "--since",
            "1h",
            "--out",
            str(out),
            "--registry",
            reg,
        ],
    )
    assert export.exit_code == 0, export.output
    record = json.loads((tmp_path / "liked.jsonl.export.json").read_text())
    assert record["leaked_dropped"] == 1  # the held-out prompt, though its order number was redacted
    assert record["duplicates_dropped"] == 1  # prompts[0] asked twice, same greedy answer
    assert record["rows"] == 6 == len(out.read_text().splitlines())
    assert record["heldout_checked"] == ["support@1"]

    train = CliRunner().invoke(
        cli,
        [
            "train",
            "--base-model",
            "tiny",
            "--name",
            "support",
            "--data",
            str(out),
            "--init-adapter",
            "support@1",
            "--max-steps",
            "2",
            "--output-dir",
            str(tmp_path / "runs"),
            "--registry",
            reg,
            "lora.r=8",
            "lora.alpha=16",
            "data.max_seq_len=96",
            "data.overlong=truncate",  # rows of ~100-150 tokens: cut the prompt, keep the answer
            "eval.max_examples=1",
            "eval.max_new_tokens=2",
            "eval.compare_base=false",
            "data.test_fraction=0",
            "data.val_fraction=0",
        ],
    )
    assert train.exit_code == 0, train.output
    new = Registry(reg).get("support")
    assert new.version == 2 and new.parent == 1
    assert new.lineage["init_adapter"]["ref"] == "support@1"
    assert new.lineage["export"]["sha256"] == record["sha256"] and new.lineage["export"]["unchanged"]
    assert new.lineage["export"]["filters"]["thumbs"] == "up"


def test_init_adapter_of_another_rank_is_a_clear_error(logging_server: Server, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(20)))
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--base-model",
            "tiny",
            "--data",
            str(data),
            "--init-adapter",
            "support@1",
            "--no-push",
            "--output-dir",
            str(tmp_path / "runs"),
            "--registry",
            str(logging_server.registry),
            "lora.r=4",
        ],
    )
    assert result.exit_code == 1 and "its rank is 8, this run's lora.r is 4" in result.output
    assert "Traceback" not in result.output


def test_thumbs_and_review_choices_export_as_dpo_pairs_and_kto_rows(
    logging_server: Server, tmp_path: Path
) -> None:
    from registry import reviews as rv
    from registry.redact import redact
    from registry.rubric import load_rubric
    from trainer.data import clean_text

    question = "My invoice shows a double charge, what now?"

    def sampled(seed: int) -> tuple[str, str]:
        reply = logging_server.client().chat.completions.create(
            model="support",
            messages=[{"role": "user", "content": question}],
            max_tokens=12,
            temperature=1.0,
            seed=seed,
        )
        # the answer as exported: redacted and stored as the log keeps it (no NUL), cleaned as training does
        stored = redact(reply.choices[0].message.content or "").replace("\x00", "\ufffd")
        return reply.id, clean_text(stored)

    (up, up_text), (down, down_text) = sampled(1), sampled(2)
    assert up_text != down_text
    assert _feedback(logging_server, {"id": up, "thumbs": "up", "score": 0.9}).status_code == 200
    assert _feedback(logging_server, {"id": down, "thumbs": "down", "score": 0.2}).status_code == 200
    wait_until(lambda: _logged(logging_server, up) and _logged(logging_server, down), 10)

    reg = Registry(logging_server.registry)  # a finished human review between two versions of the name
    spec = rv.ReviewSpec("support@1", "support@9", load_rubric().to_dict(), reviewers_per_item=1, source="t")
    item = rv.NewItem([{"role": "user", "content": "Where is my parcel?"}], "It ships today.", "No.", True)
    reg.reviews().create("prefs", spec, [item])
    review = reg.reviews().list_reviews()[-1].name
    finish_review(reg, review)  # answer a preferred: tone 5 against 2

    def export(*flags: str) -> tuple[int, str, list[dict[str, object]]]:
        out = tmp_path / f"{'-'.join(f.strip('-') for f in flags)}.jsonl"
        args = [
            "data",
            "export",
            "support",
            *flags,
            "--out",
            str(out),
            "--registry",
            str(logging_server.registry),
        ]
        res = CliRunner().invoke(cli, args)
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        return res.exit_code, res.output, rows

    code, output, pairs = export("--pairs")
    assert code == 0, output
    by_source = {str(r["source"]): r for r in pairs}
    fb = by_source["feedback"]
    assert fb["prompt"] == [{"role": "user", "content": question}]
    assert fb["chosen"] == [{"role": "assistant", "content": up_text}]
    assert fb["rejected"] == [{"role": "assistant", "content": down_text}]
    assert fb["scores"] == {"score": {"chosen": 0.9, "rejected": 0.2}}
    rev = by_source["review"]
    assert rev["chosen"] == [{"role": "assistant", "content": "It ships today."}]
    assert rev["rejected"] == [{"role": "assistant", "content": "No."}]
    assert rev["chosen_version"] == "support@1" and rev["rejected_version"] == "support@9"
    assert rev["scores"]["tone"] == {"chosen": 5.0, "rejected": 2.0}  # type: ignore[index]
    record = json.loads((tmp_path / "pairs.jsonl.export.json").read_text())
    assert record["kind"] == "pairs" and record["rows"] == len(pairs) and record["sources"]["review"] == 1

    code, output, unpaired = export("--unpaired")
    assert code == 0, output
    labelled = {(str(r["source"]), json.dumps(r["completion"]), r["label"]) for r in unpaired}
    assert ("feedback", json.dumps([{"role": "assistant", "content": up_text}]), True) in labelled
    assert ("feedback", json.dumps([{"role": "assistant", "content": down_text}]), False) in labelled
    assert ("review", json.dumps([{"role": "assistant", "content": "No."}]), False) in labelled
    code, output, disliked = export("--unpaired", "--thumbs", "down")
    assert code == 0 and disliked and all(r["label"] is False for r in disliked), output

    code, output, _ = export("--thumbs", "down")  # disliked answers as SFT targets: refused, says why
    assert code == 2 and "--unpaired" in output and "teach the model" in output, output
