"""A model as judge: which of two versions' answers is better, by the rubric the human review uses.

`platform eval A B --data FILE --judge REF` (a registry version or `base`, in this process or through
`--server`) or `--judge-url URL --judge-model M` (any OpenAI-compatible endpoint) shows the judge
each row's prompt and both answers, with the rubric's criteria and its preference question, and asks
for a verdict: `{"<criterion>_1": 4, "<criterion>_2": 2, ..., "preference": "1" | "2" | "tie"}`.

- Both orders: every row is asked twice, A's answer first and then B's first; a row's outcome is the
  mean of the two verdicts (a judge that always picks the first answer gets ties, not a winner).
- A reply with no readable preference is unparsable: counted and left out, never guessed; a row
  with an unparsable order is left out too (one order alone carries the position bias).
- Constrained where we can: an in-process judge decodes with xgrammar (vLLM's structured-output
  backend) through transformers; a judge behind our server gets `response_format` json_schema; any
  other endpoint gets the schema only with `structured=True`, and its replies are parsed leniently.

The result: B against A, win/tie/loss over rows, B's preference rate (ties half) with the paired
bootstrap of `trainer/compare.py`, and the judge's agreement with people where a review of the same
pair exists (`trainer/judge_agreement.py`). The rate is the `judge` metric of offline gates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from registry.rubric import Rubric
from trainer.data import Example
from trainer.errors import TrainerError

PREFERENCES = ("1", "2", "tie")
METRIC = "judge"
"""The offline-gate metric: the candidate's preference rate (ties count half)."""
SYSTEM = (
    "You are an impartial judge. You compare two answers to the same conversation and rate them "
    "by the rubric. Judge the content, not the order or the length. Reply with one JSON object only."
)


class JudgeError(TrainerError):
    """The judge cannot be reached or refuses the request (the message names the judge, no key)."""


@dataclass(frozen=True)
class JudgeSpec:
    """Which judge `platform eval --judge/--judge-url` names, and how to ask it."""

    ref: str | None = None
    """A registry version or `base`: in this process, or through `server`."""
    url: str | None = None
    """An OpenAI-compatible endpoint (its base URL, with or without `/v1`)."""
    model: str | None = None
    """The model name to ask at `url`."""
    api_key: str | None = field(default=None, repr=False)
    server: str | None = None
    """Our `platform serve` that serves `ref` (then `response_format` json_schema is used)."""
    structured: bool | None = None
    """Ask `url` for schema-constrained JSON (None: only our own server and in-process judges)."""
    rubric: Path | None = None
    """The rubric YAML (None: the matching human review's rubric, else the shipped default)."""
    max_tokens: int = 256

    @property
    def name(self) -> str:
        return self.ref or f"{self.model or 'default'} at {self.url}"


class Judge(Protocol):
    def complete(self, conversations: list[list[dict[str, str]]], schema: dict[str, Any]) -> list[str]:
        """The judge's reply to each conversation (greedy)."""
        ...


def verdict_schema(rubric: Rubric) -> dict[str, Any]:
    """The JSON schema of a verdict: each criterion's score for answer 1 and 2, then the preference."""
    props: dict[str, Any] = {}
    for c in rubric.criteria:
        for side in ("1", "2"):
            props[f"{c.name}_{side}"] = {"type": "integer", "enum": c.points}
    props["preference"] = {"type": "string", "enum": list(PREFERENCES)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def judge_messages(
    rubric: Rubric, conversation: Sequence[dict[str, str]], first: str, second: str
) -> list[dict[str, str]]:
    """The judge's conversation: the rubric, the prompt, answer 1 and answer 2."""
    talk = "\n".join(f"[{m['role']}] {m['content']}" for m in conversation)
    criteria = "\n".join(f"- {c.name} ({c.low}-{c.high}): {c.description}" for c in rubric.criteria)
    keys = ", ".join(f'"{c.name}_1", "{c.name}_2"' for c in rubric.criteria)
    user = (
        f"Conversation:\n{talk}\n\n[answer 1]\n{first}\n\n[answer 2]\n{second}\n\n"
        f"Rate both answers on each criterion:\n{criteria}\n\n"
        f"Then the preference: {rubric.preference} Write 1, 2 or tie.\n"
        f'Reply as JSON with the keys {keys}, "preference".'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_PREF_FIELD = re.compile(r'"?preference"?\s*[:=]\s*"?\s*(?:answer[ _]?)?(1|2|tie)\b', re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """`1`, `2` or `tie` from a reply, or None when it states no preference we can read.

    JSON (the whole reply or the first `{...}` in it) with a `preference` field, else a line
    `preference: 1`; anything else is unparsable (no guessing from stray digits)."""
    value: Any = None
    for candidate in (text, *re.findall(r"\{.*?\}", text, re.DOTALL)):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and "preference" in obj:
            value = obj["preference"]
            break
    if value is not None:
        word = str(value).strip().lower().removeprefix("answer").strip(" _")
        return word if word in PREFERENCES else None
    m = _PREF_FIELD.search(text)
    return m.group(1).lower() if m else None


@dataclass(frozen=True)
class RowVerdict:
    """One row: the judge's reply in each order and what they add up to (for B against A)."""

    index: int
    messages: list[dict[str, str]]
    a_first: str
    """Raw reply when A's answer was answer 1."""
    b_first: str
    """Raw reply when B's answer was answer 1."""
    verdicts: tuple[str | None, str | None]
    """Each order's verdict in versions: `a`, `b`, `tie` or None (unparsable)."""

    @property
    def score(self) -> float | None:
        """B's share of the row: 1 both orders prefer B, 0.5 tie or split, 0 both prefer A."""
        if None in self.verdicts:
            return None
        points = {"b": 1.0, "tie": 0.5, "a": 0.0}
        return sum(points[v] for v in self.verdicts if v is not None) / 2

    @property
    def outcome(self) -> str | None:
        """`a`, `b` or `tie` (None: unparsable)."""
        s = self.score
        return None if s is None else ("b" if s > 0.5 else "a" if s < 0.5 else "tie")


@dataclass
class JudgeReport:
    first: str
    second: str
    judge: str
    rows: list[RowVerdict]
    rate: float = 0.0
    """B's preference rate over parsed rows (ties half)."""
    low: float = 0.0
    high: float = 0.0
    agreement: list[Any] = field(default_factory=list)
    """`trainer.judge_agreement.Agreement` per human review of the same pair."""

    @property
    def wins(self) -> int:
        return sum(r.outcome == "b" for r in self.rows)

    @property
    def ties(self) -> int:
        return sum(r.outcome == "tie" for r in self.rows)

    @property
    def losses(self) -> int:
        return sum(r.outcome == "a" for r in self.rows)

    @property
    def unparsable(self) -> int:
        """Replies with no readable verdict (two per row are asked)."""
        return sum(v is None for r in self.rows for v in r.verdicts)

    @property
    def unparsable_rows(self) -> int:
        return sum(r.outcome is None for r in self.rows)

    def summary(self) -> str:
        return (
            f"judge {self.judge}, both orders: {self.second} vs {self.first}: win {self.wins} / tie "
            f"{self.ties} / loss {self.losses}, unparsable {self.unparsable} of {2 * len(self.rows)} "
            f"replies ({self.unparsable_rows} rows left out); {self.second} preferred "
            f"{self.rate:.3f} [{self.low:.3f}, {self.high:.3f}]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "judge": self.judge,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "unparsable": self.unparsable,
            "rate": self.rate,
            "interval": [self.low, self.high],
            "agreement": [a.__dict__ for a in self.agreement],
            "rows": [r.__dict__ | {"outcome": r.outcome} for r in self.rows],
        }


_AS_VERSION = {"a_first": {"1": "a", "2": "b", "tie": "tie"}, "b_first": {"1": "b", "2": "a", "tie": "tie"}}


def judge_pair(
    judge: Judge,
    rubric: Rubric,
    examples: Sequence[Example],
    answers: tuple[list[str], list[str]],
    refs: tuple[str, str],
    judge_name: str,
) -> JudgeReport:
    """Ask `judge` about every row in both orders and add the verdicts up (B against A)."""
    from trainer.compare import bootstrap_diff

    a, b = answers
    convs = [ex.prompt_messages for ex in examples]
    asked = [judge_messages(rubric, c, x, y) for c, x, y in zip(convs, a, b, strict=True)]
    asked += [judge_messages(rubric, c, y, x) for c, x, y in zip(convs, a, b, strict=True)]
    replies = judge.complete(asked, verdict_schema(rubric))
    n = len(convs)
    rows = []
    for i, conv in enumerate(convs):
        first, second = replies[i], replies[n + i]
        p1, p2 = parse_verdict(first), parse_verdict(second)
        verdicts = (
            None if p1 is None else _AS_VERSION["a_first"][p1],
            None if p2 is None else _AS_VERSION["b_first"][p2],
        )
        rows.append(RowVerdict(i, [dict(m) for m in conv], first, second, verdicts))
    report = JudgeReport(refs[0], refs[1], judge_name, rows)
    scores = [r.score for r in rows if r.score is not None]
    if scores:
        report.rate, report.low, report.high = bootstrap_diff([0.0] * len(scores), scores)
    return report


class HTTPJudge:
    """A judge behind an OpenAI-compatible endpoint, asked through the official `openai` client."""

    def __init__(self, url: str, model: str, api_key: str | None, structured: bool, max_tokens: int) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/v1") else base + "/v1"
        self.model, self.structured, self.max_tokens = model, structured, max_tokens
        self.api_key = api_key or "none"

    def complete(self, conversations: list[list[dict[str, str]]], schema: dict[str, Any]) -> list[str]:
        import openai

        client = openai.OpenAI(base_url=self.url, api_key=self.api_key, max_retries=2)
        extra: dict[str, Any] = {}
        if self.structured:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema, "strict": True},
            }
        out = []
        for conv in conversations:
            try:
                reply = client.chat.completions.create(
                    model=self.model,
                    messages=conv,  # type: ignore[arg-type]
                    max_tokens=self.max_tokens,
                    temperature=0,
                    **extra,
                )
            except openai.APIStatusError as exc:
                raise JudgeError(
                    f"judge {self.model} at {self.url}: HTTP {exc.status_code}: {exc.message}"
                ) from exc
            except openai.APIError as exc:
                raise JudgeError(f"judge {self.model} at {self.url}: {exc.message}") from exc
            out.append(reply.choices[0].message.content or "")
        return out


class LocalJudge:
    """A registry version (or `base`) as judge in this process: transformers + peft, decoding
    constrained to the verdict schema by xgrammar's logits processor."""

    def __init__(self, ref: str, registry_root: str | None, max_tokens: int, batch_size: int = 8) -> None:
        self.ref, self.root, self.max_tokens, self.batch_size = ref, registry_root, max_tokens, batch_size

    def complete(self, conversations: list[list[dict[str, str]]], schema: dict[str, Any]) -> list[str]:
        import xgrammar
        from xgrammar.contrib.hf import LogitsProcessor

        from trainer.evaluate import generate
        from trainer.loading import attach, resolve_adapters
        from trainer.model import load_base, load_tokenizer

        base, versions = resolve_adapters([self.ref], self.root)
        tokenizer = load_tokenizer(base)
        model = attach(load_base(base), versions)
        if versions[0] is not None:
            model.set_adapter(versions[0].ref)
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        grammar = xgrammar.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
        rows = [Example(tuple((m["role"], m["content"]) for m in conv), "") for conv in conversations]
        return generate(
            model,
            tokenizer,
            rows,
            self.max_tokens,
            self.batch_size,
            logits_processor=lambda: [LogitsProcessor(grammar)],
        )


def make_judge(spec: JudgeSpec, registry_root: str | None) -> Judge:
    """The judge `spec` names: an endpoint, our server serving `ref`, or `ref` in this process."""
    if spec.url:
        if not spec.model:
            raise JudgeError("--judge-url needs --judge-model NAME (the model to ask there)")
        return HTTPJudge(spec.url, spec.model, spec.api_key, bool(spec.structured), spec.max_tokens)
    if spec.ref is None:
        raise JudgeError("name a judge: --judge REF (a version or `base`) or --judge-url URL")
    if spec.server:
        structured = True if spec.structured is None else spec.structured
        return HTTPJudge(spec.server, spec.ref, spec.api_key, structured, spec.max_tokens)
    return LocalJudge(spec.ref, registry_root, spec.max_tokens)


def judge_versions(
    spec: JudgeSpec,
    refs: tuple[str, str],
    examples: Sequence[Example],
    answers: tuple[list[str], list[str]],
    registry_root: str | None,
) -> JudgeReport:
    """`judge_pair` with the judge and rubric `spec` names (default rubric: the one people used on a
    review of the same pair, else the shipped one), plus the agreement with those people."""
    from registry.rubric import load_rubric
    from registry.store import Registry
    from trainer.judge_agreement import agreement, review_rubric

    reg = Registry(registry_root)
    rubric = load_rubric(spec.rubric) if spec.rubric else review_rubric(reg, refs) or load_rubric()
    report = judge_pair(make_judge(spec, registry_root), rubric, examples, answers, refs, spec.name)
    report.agreement = agreement(reg, report)
    return report
