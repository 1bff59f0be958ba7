"""Opt-in payload logging: what `platform serve --log-payloads NAME ...` writes, and its upkeep.

Off by default. For the adapters and A/B routes named, every completion is logged (prompt or
messages, choice 0's answer, the version that answered, latency, TTFT, finish reason) through a
`BatchWriter`, so logging never blocks or fails a request. Text passes the redaction hook in the
writer thread before it is stored: by default e-mail addresses and numbers of 4 or more digits
(phone, card, account numbers) are replaced; `payload_redactor: module:function` plugs in
another (a function from text to text). Text longer than MAX_TEXT_CHARS is cut first; a prompt
given as token ids is decoded and redacted like text. The same hook cleans feedback comments and
shadow answers (serving/experiments/evidence.py). The server deletes rows older than
`payload_retention_days`, clears the shadow answers and feedback comments of that age from the
A/B evidence, and refreshes the drift gauges in one upkeep task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from registry.payloads import PayloadRecord, PayloadStore, last_user_text, prompt_digest
from registry.redact import redact as redact  # the default hook (linear time; shared with the trainer)
from serving.batching import BatchWriter
from serving.experiments.drift import drift_report
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.settings import ServeSettings, StartupError

if TYPE_CHECKING:
    from serving.generation import Tracker
    from serving.jobs import Job
    from serving.state import ServerState

log = logging.getLogger("lora_platform.payloads")
Redactor = Callable[[str], str]

MAX_TEXT_CHARS = 1_000_000
"""Longer text is cut to this many characters before it is redacted and stored."""
REDACTION_FAILED = "[redaction failed]"


def capped(text: str) -> str:
    """`text`, cut to MAX_TEXT_CHARS (and saying so) when longer."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return f"{text[:MAX_TEXT_CHARS]}[... {len(text) - MAX_TEXT_CHARS} characters not kept]"


def redacted(redactor: Redactor, text: str) -> str:
    """`text` capped and passed through the hook; a failing hook stores a marker, never the text."""
    try:
        return str(redactor(capped(text)))
    except Exception:  # a broken hook must not store unredacted text, nor stop the writer
        log.exception("payload redaction hook failed")
        return REDACTION_FAILED


def load_redactor(spec: str) -> Redactor:
    """The function `module:function` names; StartupError (naming the setting) when it does not load."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StartupError(f"{spec!r}: expected module:function", param="--payload-redactor")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StartupError(f"{spec!r} cannot be loaded: {exc}", param="--payload-redactor") from None
    if not callable(func):
        raise StartupError(f"{spec!r} is not a function", param="--payload-redactor")
    return func  # type: ignore[no-any-return]


def request_text(req: ChatCompletionRequest | CompletionRequest) -> str:
    """The request's prompt as the JSON the payload row keeps."""
    if isinstance(req, ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return json.dumps({"messages": messages})
    one = isinstance(req.prompt, list) and len(req.prompt) == 1 and isinstance(req.prompt[0], str)
    prompt = req.prompt[0] if one else req.prompt
    return json.dumps({"prompt": prompt})


def model_name(model: str) -> str:
    """The adapter name of a reference (`support@3`, `support:prod` -> `support`)."""
    return re.split(r"[@:]", model, maxsplit=1)[0]


class PayloadLogger:
    """Logs the completions of the names it was given; `record()` only enqueues."""

    def __init__(
        self,
        store: PayloadStore,
        settings: ServeSettings,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self.store = store
        self.names = frozenset(settings.log_payloads)
        self.redactor = load_redactor(settings.payload_redactor)
        self.retention_s = settings.payload_retention_days * 86400
        self.decode = decode
        """The tokenizer's decode, for prompts given as token ids (without it they are not kept)."""
        self._recent: OrderedDict[str, str | None] = OrderedDict()
        self.writer = BatchWriter[PayloadRecord](self._write, "payloads", on_close=None)

    def name_of(self, job: Job) -> str | None:
        """The logged name a job falls under (its route, else its adapter), or None."""
        name = job.route or model_name(job.model)
        return name if name in self.names else None

    def record(self, job: Job, served: str, tracker: Tracker, status: str, request: str) -> None:
        name = self.name_of(job)
        if name is None:
            return
        rec = PayloadRecord(
            id=job.id,
            ts=time.time(),
            name=name,
            version=served,
            request=request,
            completion=tracker.text,
            finish_reason=tracker.finish_reason,
            status=status,
            latency_s=tracker.latency,
            ttft_s=tracker.ttft,
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=tracker.completion_tokens,
            key_hash=job.key_hash,
        )
        self._recent[job.id] = job.key_hash
        while len(self._recent) > 100_000:
            self._recent.popitem(last=False)
        self.writer.record(rec)

    def owner(self, completion_id: str) -> tuple[bool, str | None]:
        """Whether a completion was logged (just now, in memory, or in the database), and the
        keyed hash of the API key that made it."""
        if completion_id in self._recent:
            return True, self._recent[completion_id]
        return self.store.owner(completion_id)

    def feedback(
        self, completion_id: str, score: float | None, thumbs: int | None, comment: str | None
    ) -> None:
        """Store feedback on a logged completion (its comment redacted like the payload)."""
        self.store.add_feedback(completion_id, score, thumbs, self._redacted(comment))

    def _redacted(self, text: str | None) -> str | None:
        return None if text is None else redacted(self.redactor, text)

    def _prompt_text(self, prompt: object) -> object:
        """A prompt given as token ids, decoded (None when it cannot be); other prompts as they are."""
        if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
            return prompt
        if self.decode is None:
            return None
        try:
            return self.decode(prompt)
        except Exception:  # an id the tokenizer cannot decode: keep nothing rather than the ids
            log.exception("decoding a token-id prompt for the payload log failed")
            return None

    def _write(self, rows: Sequence[PayloadRecord]) -> None:
        clean = []
        for r in rows:
            request = r.request_json()
            if "prompt" in request:
                request["prompt"] = self._prompt_text(request["prompt"])
            prompt = last_user_text(request)
            digest = None if prompt is None else prompt_digest(prompt)
            if "messages" in request:
                for m in request["messages"]:
                    m["content"] = self._redacted(m.get("content"))
            elif isinstance(request.get("prompt"), str):
                request["prompt"] = self._redacted(request["prompt"])
            completion = self._redacted(r.completion)
            clean.append(
                dataclasses.replace(
                    r, request=json.dumps(request), completion=completion, prompt_sha256=digest
                )
            )
        self.store.insert(clean)

    def close(self) -> None:
        self.writer.close()


async def upkeep(state: ServerState) -> None:
    """Delete payload rows past retention and clear the evidence's text of that age (every
    `payload_purge_interval_s`), refresh the drift gauges (every `drift_interval_s`) when payloads
    are logged; failures are logged and tried again next time."""
    logger, s = state.payloads, state.settings
    retention_s = s.payload_retention_days * 86400
    last_purge = 0.0
    while True:
        now = time.time()
        try:
            if now - last_purge >= s.payload_purge_interval_s:
                await _purge(state, now - retention_s)
                last_purge = now
            if logger is not None:
                reports = {
                    name: await asyncio.to_thread(
                        drift_report, logger.store, name, s.drift_reference_s, s.drift_window_s
                    )
                    for name in sorted(logger.names)
                }
                state.metrics.drift.observe([r for rs in reports.values() for r in rs])
        except Exception:  # nothing may stop the upkeep task
            log.exception("payload upkeep failed")
        await asyncio.sleep(min(s.payload_purge_interval_s, s.drift_interval_s))


async def _purge(state: ServerState, before: float) -> None:
    """Delete logged payloads from before `before` and clear the A/B evidence's free text (shadow
    answers, feedback comments) of that age."""
    if state.payloads is not None:
        removed = await asyncio.to_thread(state.payloads.store.purge, before)
        if removed:
            log.info("payloads: %d rows past retention deleted", removed)
    if state.evidence is not None:
        cleared = await asyncio.to_thread(state.evidence.store.purge_text, before)
        if cleared:
            log.info("evidence: text of %d rows past payload retention cleared", cleared)
