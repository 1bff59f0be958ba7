"""Locust scenarios that speak the OpenAI API to `/v1/chat/completions` and `/v1/completions`.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 60s \
        --csv loadtests/results/run --html loadtests/results/run.html

Environment (all optional):
  LOADTEST_SCENARIO   base | one | uniform | powerlaw | ab           (default uniform)
  LOADTEST_MODELS     comma-separated adapter references              (default: from /v1/models)
  LOADTEST_BASE       the base model's name                           (default: first of /v1/models)
  LOADTEST_ROUTE      A/B route name for the `ab` scenario
  LOADTEST_STREAM     fraction of requests that stream                (default 0.5)
  LOADTEST_CHAT       fraction of requests that use chat (vs text)    (default 0.75)
  LOADTEST_MAX_TOKENS tokens per request                              (default 32)
  LOADTEST_ARRIVAL    closed (default) | poisson: exponential think time with mean 1/LOADTEST_RATE per user
  LOADTEST_RATE       requests/s per user for poisson arrivals        (default 1.0)
  LOADTEST_SEED       seed of every user's random choices             (default 0)
  LOADTEST_TRACE      a file to append one JSON line per completed request to: wall-clock
                      `start`, `first` (first token, null if none) and `end`, and `tokens`
                      (the benchmark counts the tokens streamed inside its window from it)
  LOADTEST_LLAMACPP_LORAS  llama-server's adapters in --lora order: each request sends every
                      adapter's scale (1 for its model, 0 for the others; `--lora-init-without-apply`
                      still lists 1.0) and `cache_prompt: false`

Custom events (they land in Locust's CSV/HTML next to the HTTP rows):
  TTFT  time to the first non-empty content delta (the first chat chunk carries only the role);
  TPOT  (E2E - TTFT) / (tokens - 1);   E2E  whole request.
A streamed request's own response time is set to E2E (Locust alone would record time-to-headers).
Streams are read with HttpUser + iter_lines(): FastHttpUser with iter_content(1024) was measured
to read a 500 ms TTFT as 1527 ms. The first request a process sends to a model is also reported
as `<model> (cold)`, apart from the warm ones.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from locust import HttpUser, events, task

SCENARIO = os.environ.get("LOADTEST_SCENARIO", "uniform")
STREAM = float(os.environ.get("LOADTEST_STREAM", "0.5"))
CHAT = float(os.environ.get("LOADTEST_CHAT", "0.75"))
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "32"))
ARRIVAL = os.environ.get("LOADTEST_ARRIVAL", "closed")
RATE = float(os.environ.get("LOADTEST_RATE", "1.0"))
SEED = int(os.environ.get("LOADTEST_SEED", "0"))
TRACE = os.environ.get("LOADTEST_TRACE")
LLAMACPP_LORAS = [m for m in os.environ.get("LOADTEST_LLAMACPP_LORAS", "").split(",") if m]
PROMPTS = [
    "Turn this customer message into a ticket line.\n\nHi, my router has not arrived. Order 55555.",
    "Hello from Oslo! My name is Vera Lind and please send me your pricing.",
    "The app crashes whenever I open the camera page. Ref: 12345.",
    "Write one sentence about the sea.",
]
_seen: set[str] = set()
_user_counter = 0


def _fire(kind: str, name: str, ms: float, length: int = 0) -> None:
    """One custom event under the model's name and one under `all` (for whole-run percentiles)."""
    for label in (name, "all"):
        events.request.fire(
            request_type=kind,
            name=label,
            response_time=ms,
            response_length=length,
            exception=None,
            context={},
        )


def _trace(start: float, first: float | None, end: float, tokens: int) -> None:
    """One line of LOADTEST_TRACE: wall-clock times of a completed request (from perf_counter ones)."""
    if not TRACE:
        return
    shift = time.time() - time.perf_counter()
    line = {"start": start + shift, "first": None if first is None else first + shift, "end": end + shift}
    with open(TRACE, "a") as fh:
        fh.write(json.dumps({**line, "tokens": tokens}) + "\n")


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (k**s) for k in range(1, n + 1)]


class OpenAIUser(HttpUser):
    """A user that sends OpenAI requests for the scenario's models."""

    def on_start(self) -> None:
        global _user_counter
        _user_counter += 1
        self.rng = random.Random(SEED * 1000 + _user_counter)
        self.user_id = f"user-{SEED}-{_user_counter}"
        models = [m["id"] for m in self.client.get("/v1/models", name="/v1/models").json()["data"]]
        self.base = os.environ.get("LOADTEST_BASE") or models[0]
        listed = os.environ.get("LOADTEST_MODELS")
        adapters = listed.split(",") if listed else [m for m in models[1:] if "@" in m]
        self.models = {
            "base": [self.base],
            "one": adapters[:1],
            "uniform": adapters,
            "powerlaw": adapters,
            "ab": [os.environ.get("LOADTEST_ROUTE", "")],
        }[SCENARIO] or [self.base]
        self.weights = zipf_weights(len(self.models)) if SCENARIO == "powerlaw" else None

    def wait_time(self) -> float:
        """Closed loop: no think time. Poisson: exponential gaps, so arrivals form a Poisson process."""
        return self.rng.expovariate(RATE) if ARRIVAL == "poisson" else 0.0

    @task
    def request(self) -> None:
        model = self.rng.choices(self.models, weights=self.weights)[0]
        chat = self.rng.random() < CHAT
        stream = self.rng.random() < STREAM
        prompt = self.rng.choice(PROMPTS)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": stream,
            "user": self.user_id,
        }
        if "LOADTEST_LLAMACPP_LORAS" in os.environ:
            body["lora"] = [{"id": i, "scale": float(m == model)} for i, m in enumerate(LLAMACPP_LORAS)]
            body["cache_prompt"] = False
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        name = f"{model} (cold)" if model not in _seen else model
        _seen.add(model)
        label = f"{path} {name}{' stream' if stream else ''}"
        if stream:
            body["stream_options"] = {"include_usage": True}
            self._stream(path, body, label, name, chat)
        else:
            with self.client.post(path, json=body, name=label, catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {r.text[:200]}")
                    return
                usage = r.json().get("usage", {})
                _fire("E2E", name, r.elapsed.total_seconds() * 1000, usage.get("completion_tokens", 0))
                end = time.perf_counter()
                _trace(end - r.elapsed.total_seconds(), None, end, usage.get("completion_tokens", 0))
                r.success()

    def _stream(self, path: str, body: dict[str, Any], label: str, name: str, chat: bool) -> None:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        with self.client.post(path, json=body, name=label, stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            for line in r.iter_lines():
                if not line or not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    r.failure(data["error"].get("message", "stream error"))
                    return
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
                for choice in data.get("choices", []):
                    text = choice.get("delta", {}).get("content") if chat else choice.get("text")
                    if text and first is None:
                        first = time.perf_counter()
            end = time.perf_counter()
            e2e = (end - start) * 1000
            r.request_meta["response_time"] = e2e
            _fire("E2E", name, e2e, tokens)
            _trace(start, first, end, tokens)
            if first is not None:
                ttft = (first - start) * 1000
                _fire("TTFT", name, ttft)
                if tokens > 1:
                    _fire("TPOT", name, (e2e - ttft) / (tokens - 1))
            r.success()
