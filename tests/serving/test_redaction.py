"""The default PII redactor is linear in its input (issue #31, item 4), long text is capped, and
every kind of stored free text (shadow answers here; payloads, comments in test_payloads.py and
test_feedback_privacy.py) passes the hook. No server: the redactor is plain code, the evidence
writer runs against a real SQLite catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.evidence_store import RequestRecord
from registry.store import Registry
from serving.experiments.evidence import EvidenceWriter
from serving.payloads import MAX_TEXT_CHARS, capped, redact, redacted
from tests.serving.fixtures import wait_until

ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "dashes": lambda n: "-" * n,  # the quadratic case: 15,000 took 0.7 s before
    "local parts before an @": lambda n: ("a" * 63 + "@") * (n // 64),
    "@ after 63 dashes, then a short domain": lambda n: ("-" * 63 + "@b.cc") * (n // 68),
    "@ after every character": lambda n: "a@" * (n // 2),
    "long dotted domains": lambda n: ("x@" + "b." * 40) * (n // 82),
    "digits and separators": lambda n: ("1" + "(" * 40) * (n // 41),
    "digits with no end": lambda n: "1 " * (n // 2),
}


def _seconds(text: str) -> float:
    start = time.perf_counter()
    redact(text)
    return time.perf_counter() - start


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_adversarial_text_redacts_in_linear_time(kind: str) -> None:
    """Each case takes at most ~3x what ordinary prose of the same length takes (20-60 ms per MB on
    an idle core here). The bound is generous either way, 1 µs per character plus 50 ms, or 10x the
    prose measured just before (a loaded machine slows both), and still fails at once on a
    quadratic pattern: the 30,000-character probe runs first and took 1.3-2.3 s with the old
    e-mail pattern (300-500x prose)."""
    for n in (30_000, 1_000_000):
        prose = _seconds(("Hello, my order is late and I want a refund please. " * (n // 50 + 1))[:n])
        text = ADVERSARIAL[kind](n)
        elapsed = _seconds(text)
        bound = max(0.05 + n * 1e-6, 10 * prose)
        assert elapsed < bound, f"{kind}: {len(text)} characters took {elapsed:.3f} s (prose {prose:.3f} s)"


def test_the_default_redactor_still_finds_addresses_and_numbers() -> None:
    text = "Mail jane.doe+x@mail.example.co.uk or call +1 (555) 123-4567; order 42, year 2024."
    assert redact(text) == "Mail [EMAIL] or call [NUMBER]; order 42, year [NUMBER]."
    assert redact("card 4111 1111 1111 1111, 12 and 34, 555 - 1234") == "card [NUMBER], 12 and 34, [NUMBER]"
    assert redact("-" * 70 + "bob@example.com") == "-" * 9 + "[EMAIL]"  # a local part is 64 at most
    assert redact("a@b and @example.com") == "a@b and @example.com"  # not addresses


def test_long_text_is_capped_before_the_hook_sees_it() -> None:
    seen: list[int] = []

    def hook(text: str) -> str:
        seen.append(len(text))
        return text

    out = redacted(hook, "x" * (MAX_TEXT_CHARS + 10))
    assert MAX_TEXT_CHARS <= seen[0] < MAX_TEXT_CHARS + 50 and out.endswith("[... 10 characters not kept]")
    assert capped("short") == "short"
    assert redacted(lambda _: 1 / 0, "jane@example.com") == "[redaction failed]"  # type: ignore[arg-type,return-value]


def test_shadow_answers_are_redacted_before_they_are_stored(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    writer = EvidenceWriter(reg.evidence(), flush_interval_s=0.05)
    try:
        row = RequestRecord(
            "c-shadow", time.time(), "r", "r@2", None, 0.1, None, 1, 1, "ok", 1, "write to a@b.com"
        )
        writer.record(row)
        wait_until(lambda: bool(reg.evidence().load("r")[0]), 10)
    finally:
        writer.close()
    assert reg.evidence().load("r")[0][0]["output"] == "write to [EMAIL]"
