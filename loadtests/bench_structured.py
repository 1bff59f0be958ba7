"""What a JSON-schema constraint buys on the contact-json adapter, and what it costs.

    python -m loadtests.bench_structured                       # trains a tiny contact adapter first
    python -m loadtests.bench_structured --registry R --ref contact:prod --base-model smollm2

Starts `platform serve` (vLLM) on the registry, then:
  validity    - each held prompt of the contact-json sample, greedy, once without and once with
                `response_format` json_schema (CONTACT below): the share of answers that parse as
                JSON and match the schema (jsonschema), per arm.
  throughput  - one mixed batch per round: --concurrency requests at once, every other one
                constrained, same prompts and max_tokens; each request's decode rate (streamed:
                tokens after the first over first-to-last content chunk), median per arm over
                --rounds rounds. The ratio constrained / unconstrained comes from the same
                batches (one run).
Writes loadtests/results/bench_structured.json through loadtests.record (command, commit, date,
machine, package versions, figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtests.record import RESULTS, ROOT, write_result
from testkit.servers import serve_command, server_process

CONTACT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "intent": {"type": "string"}},
    "required": ["name", "city", "intent"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "contact", "schema": CONTACT, "strict": True}}
SAMPLE = ROOT / "trainer" / "samples" / "contact-json.jsonl"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows[-n:]]


def ask(
    url: str, ref: str, messages: list[dict[str, str]], max_tokens: int, constrained: bool
) -> dict[str, Any]:
    """One streamed greedy request: its text, completion tokens, and decode rate (tokens after
    the first over the time from the first to the last content chunk; queueing and prefill out,
    so short constrained answers and long unconstrained ones compare)."""
    body: dict[str, Any] = {"model": ref, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    if constrained:
        body["response_format"] = FORMAT
    parts: list[str] = []
    stamps: list[float] = []
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c["delta"].get("content"):
                    parts.append(c["delta"]["content"])
                    stamps.append(time.perf_counter())
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return {
        "text": "".join(parts),
        "tokens": tokens,
        "decode_tok_s": (tokens - 1) / span if span > 0 else None,
    }


def valid(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), CONTACT)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def validity(url: str, ref: str, rows: list[list[dict[str, str]]], max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, constrained in (("unconstrained", False), ("constrained", True)):
        answers = [ask(url, ref, m, max_tokens, constrained)["text"] for m in rows]
        out[arm] = {"valid": sum(valid(a) for a in answers), "of": len(answers), "example": answers[0][:200]}
        out[arm]["share"] = out[arm]["valid"] / len(answers)
    return out


def throughput(
    url: str, ref: str, rows: list[list[dict[str, str]]], max_tokens: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            jobs = [
                (i % 2 == 1, pool.submit(ask, url, ref, rows[(i // 2) % len(rows)], max_tokens, i % 2 == 1))
                for i in range(concurrency)
            ]
            for constrained, job in jobs:
                got = job.result()
                if got["decode_tok_s"] is not None:
                    rates["constrained" if constrained else "unconstrained"].append(got["decode_tok_s"])
    summary: dict[str, Any] = {
        arm: {"median_decode_tok_s": statistics.median(v), "requests": len(v)} for arm, v in rates.items()
    }
    summary["ratio_constrained_over_unconstrained"] = (
        summary["constrained"]["median_decode_tok_s"] / summary["unconstrained"]["median_decode_tok_s"]
    )
    return summary


def tiny_contact(root: Path) -> tuple[Path, str]:
    """A registry with a contact-json adapter trained on the tiny model (a few steps)."""
    from testkit.adapters import train_tiny

    registry = root / "registry"
    return registry, train_tiny(registry, root / "runs", "contact", "sample:contact-json", seed=2, steps=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", help="Registry with the adapter (default: train a tiny one).")
    p.add_argument("--ref", default="contact@1")
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry, ref = (Path(args.registry), args.ref) if args.registry else tiny_contact(Path(tmp))
        url = f"http://127.0.0.1:{args.port}"
        cmd = serve_command(args.base_model, registry, args.port, "--dtype", "float32", "--kv-cache-gb", "1")
        rows = prompts(args.prompts)
        with server_process(cmd, url, Path(tmp) / "server.log", ready_path="/ready"):
            result = {
                "validity": validity(url, ref, rows, args.max_tokens),
                "throughput": throughput(url, ref, rows, args.max_tokens, args.concurrency, args.rounds),
            }
    figures = {"ref": ref, "base_model": args.base_model, "max_tokens": args.max_tokens, **result}
    write_result("bench_structured", figures, args.out_dir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
