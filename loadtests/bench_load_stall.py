"""Load stall: TPOT of running streams while a large adapter is verified and loaded (#17 item 4).

    python -m loadtests.bench_load_stall                  # embedded SmolLM2 bf16, 16 users, 5 loads
    python -m loadtests.bench_load_stall --move push      # new latest versions pushed during the run
    python -m loadtests.bench_load_stall --reduced        # tiny model, seconds (a smoke test)

Starts `platform serve` (vLLM engine, --max-lora-rank 64) on a registry holding `stall@1`, a random
r=16 all-linear adapter (r=8 with --reduced), with `stall:live` pointing at it, and drives --users streaming chat users
on `stall:live` in a closed loop (no think time, temperature 0, fixed max_tokens; the API has no
ignore_eos, so a stream may end early: its token count comes from the usage chunk). Every stream
records its start, each content chunk's arrival (wall clock, as the server's metrics) and its end:
TTFT, TPOT = (e2e - ttft) / (tokens - 1) and the largest gap between two chunks.

After --warmup s (discarded) and --steady s of steady traffic, --loads times: a version of
`stall` holding a random rank-64 all-linear adapter in fp32 (~78 MB of safetensors on SmolLM2-135M)
becomes what `stall:live` names (--move alias: versions pushed before the server starts, the alias
is moved; the push's own copy and hashing stay out of the window, as on a trainer elsewhere;
--move push: `stall:live` stays and requests use `stall`, new latest pushed by this process),
the server loads it (ahead, or for a request that resolved it first: the trigger is recorded), and
the load's interval is read from /metrics: it ends at lora_adapter_last_load_timestamp_seconds and
lasted the increase of lora_adapter_load_seconds_sum (verification: sha256 of every file,
validation, vLLM's add_lora). Then --gap s of traffic before the next one.

Streams are grouped by their decode phase (first chunk to end): `load` overlaps a load interval;
`after` overlaps only the --settle s after one (first requests on the new version); `steady
before` ended before the first move; `steady` is every stream away from all moves. Writes
loadtests/results/bench_load_stall.json with the machine (CPU model, AMX or not) and prints the ratios
of `load` to `steady before` (target: TPOT p99 <= 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.record import RESULTS, write_result
from serving.experiments.stats import percentile
from testkit.adapters import make_adapters
from testkit.servers import serve_command, server_process

PROMPT = "Write a long story about a lighthouse keeper and the sea, with many details."
LOAD_METRICS = ("lora_adapter_loads_total", "lora_adapter_load_seconds_sum")


@dataclass
class Stream:
    start: float
    end: float = 0.0
    tokens: int = 0
    chunks: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ttft_ms(self) -> float:
        return (self.chunks[0] - self.start) * 1000

    @property
    def tpot_ms(self) -> float:
        return (self.end - self.chunks[0]) * 1000 / (self.tokens - 1)

    @property
    def max_gap_ms(self) -> float:
        gaps = [b - a for a, b in itertools.pairwise(self.chunks)]
        return max(gaps, default=0.0) * 1000

    def overlaps(self, lo: float, hi: float) -> bool:
        return bool(self.chunks) and self.chunks[0] < hi and self.end > lo


async def one_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Stream:
    s = Stream(time.time())
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            s.error = f"{r.status_code}: {(await r.aread())[:200]!r}"
        else:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    s.tokens = data["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in data.get("choices", [])):
                    s.chunks.append(time.time())
    s.end = time.time()
    return s


async def user(
    client: httpx.AsyncClient, body: dict[str, Any], stop: asyncio.Event, out: list[Stream]
) -> None:
    while not stop.is_set():
        try:
            out.append(await one_stream(client, body))
        except httpx.HTTPError as exc:
            out.append(Stream(time.time(), time.time(), error=repr(exc)))


def samples(text: str) -> dict[tuple[str, str], float]:
    """{(metric, trigger): value} of the load metrics in a /metrics page."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in (*LOAD_METRICS, "lora_adapter_last_load_timestamp_seconds") and 'trigger="' in rest:
            trigger = rest.split('trigger="', 1)[1].split('"', 1)[0]
            out[(name, trigger)] = float(line.rsplit(" ", 1)[1])
    return out


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    return samples((await client.get("/metrics")).text)


async def one_load(client: httpx.AsyncClient, move: Any, timeout_s: float = 60) -> dict[str, Any]:
    """Make `stall:live` (or `stall`) name a new version; wait for its load; its interval."""
    before = await scrape(client)
    moved = time.time()
    await asyncio.to_thread(move)
    committed = time.time()
    while time.time() - moved < timeout_s:
        now = await scrape(client)
        changed = [t for (m, t), v in now.items() if m == LOAD_METRICS[0] and v > before.get((m, t), 0)]
        if changed:
            t = changed[0]
            end = now[("lora_adapter_last_load_timestamp_seconds", t)]
            seconds = now[(LOAD_METRICS[1], t)] - before.get((LOAD_METRICS[1], t), 0)
            return {
                "trigger": t,
                "moved": moved,
                "committed": committed,
                "start": end - seconds,
                "end": end,
                "load_s": seconds,
            }
        await asyncio.sleep(0.05)
    raise SystemExit(f"no adapter load within {timeout_s}s of a move")


def stats(streams: list[Stream]) -> dict[str, Any]:
    def pcts(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {f"p{q}_ms": round(percentile(values, q) or 0.0, 1) for q in (50, 90, 99)} | {
            "max_ms": round(max(values), 1)
        }

    return {
        "streams": len(streams),
        "tokens_mean": round(sum(s.tokens for s in streams) / max(len(streams), 1), 1),
        "TTFT": pcts([s.ttft_ms for s in streams]),
        "TPOT": pcts([s.tpot_ms for s in streams]),
        "max_gap": pcts([s.max_gap_ms for s in streams]),
    }


def groups(streams: list[Stream], loads: list[dict[str, Any]], t0: float, settle: float) -> dict[str, Any]:
    """Streams by what their decode phase overlapped (module docstring)."""
    good = [s for s in streams if s.error is None and s.tokens > 1 and s.chunks and s.start >= t0]
    first_move = min(x["moved"] for x in loads)
    load = [s for s in good if any(s.overlaps(x["start"], x["end"]) for x in loads)]
    after = [s for s in good if s not in load and any(s.overlaps(x["end"], x["end"] + settle) for x in loads)]
    away = [s for s in good if not any(s.overlaps(x["moved"], x["end"] + settle) for x in loads)]
    return {
        "steady before": stats([s for s in away if s.end < first_move]),
        "steady": stats(away),
        "load": stats(load),
        "after": stats(after),
    }


def pauses(streams: list[Stream], loads: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """Longest time no stream received a chunk: in the steady window, and around each load (from
    the move to 0.5 s after the load: a paused engine shows here whatever the streams' lengths)."""

    def longest(lo: float, hi: float, within: bool = False) -> float:
        gaps = [
            b - a
            for a, b in itertools.pairwise(times)
            if (a >= lo and b <= hi if within else b > lo and a < hi)
        ]
        return round(max(gaps, default=0.0) * 1000, 1)

    times = sorted(c for s in streams for c in s.chunks)

    first_move = min(x["moved"] for x in loads)
    return {
        "steady_ms": longest(t0, first_move, within=True),
        "loads_ms": [longest(x["moved"], x["end"] + 0.5) for x in loads],
    }


def ratios(g: dict[str, Any]) -> dict[str, float]:
    out = {}
    for kind, q in (("TPOT", "p50_ms"), ("TPOT", "p99_ms"), ("max_gap", "p99_ms"), ("max_gap", "max_ms")):
        for base in ("steady before", "steady"):
            ref = g[base][kind].get(q) or float("nan")
            out[f"{kind} {q[:-3]} load/{base}"] = round(g["load"][kind].get(q, float("nan")) / ref, 3)
    return out


async def drive(url: str, args: argparse.Namespace, model: str, moves: list[Any]) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limits = httpx.Limits(max_connections=args.users + 4)
    streams: list[Stream] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        users = [asyncio.create_task(user(client, body, stop, streams)) for _ in range(args.users)]
        await asyncio.sleep(args.warmup)
        t0 = time.time()
        await asyncio.sleep(args.steady)
        loads = []
        for move in moves:
            loads.append(await one_load(client, move))
            x = loads[-1]
            print(
                f"load {len(loads)}: {x['trigger']}, {x['load_s'] * 1000:.0f} ms, "
                f"ended {(x['end'] - x['moved']) * 1000:.0f} ms after the move",
                flush=True,
            )
            await asyncio.sleep(args.gap)
        stop.set()
        await asyncio.gather(*users)
    if args.raw:  # every stream's times from the steady window's start, and the loads', for analysis
        raw = {
            "t0": t0,
            "loads": [{k: v - t0 for k, v in x.items() if k in ("moved", "start", "end")} for x in loads],
            "streams": [[s.start - t0, s.end - t0, s.tokens, [c - t0 for c in s.chunks]] for s in streams],
        }
        Path(args.raw).write_text(json.dumps(raw))
    errors = [s.error for s in streams if s.error]
    return {
        "loads": [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()} for x in loads],
        "errors": len(errors),
        "first_errors": errors[:3],
        "groups": groups(streams, loads, t0, args.settle),
        "all_streams_paused": pauses(streams, loads, t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--rank", type=int, default=64, help="rank of the loaded versions")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--steady", type=float, default=20)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--gap", type=float, default=6, help="seconds of traffic after each load")
    parser.add_argument("--settle", type=float, default=1, help="seconds after a load counted as `after`")
    parser.add_argument("--move", choices=("alias", "push"), default="alias")
    parser.add_argument("--port", type=int, default=8460)
    parser.add_argument("--raw", help="also write every stream's chunk times to this JSON file")
    parser.add_argument("--server-log", help="keep the server's log here")
    parser.add_argument("--reduced", action="store_true", help="tiny model, 4 users, 2 loads, seconds")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    if args.reduced:
        args.base_model, args.users, args.max_tokens, args.rank = "tiny", 4, 8, 8
        args.warmup, args.steady, args.loads, args.gap = 2, 3, 2, 1

    from registry.basemodels import resolve_base_model
    from registry.store import Registry

    base = resolve_base_model(args.base_model)
    report: dict[str, Any] = {"base_model": base.id, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        small = make_adapters(base.path, 1, min(16, args.rank), tmp / "small")[0]
        big = make_adapters(base.path, 1, args.rank, tmp / "big")[0]
        size = (big / "adapter_model.safetensors").stat().st_size
        report["adapter"] = {
            "rank": args.rank,
            "targets": "all-linear",
            "dtype": "float32",
            "safetensors_bytes": size,
        }
        print(f"loaded adapter: rank {args.rank}, {size / 1e6:.1f} MB", flush=True)
        reg = Registry(tmp / "registry")
        lineage = {
            "base_model": base.id,
            "base_model_sha256": base.weights_sha256,
            "source": "loadtests (random weights)",
        }
        reg.set_alias(reg.push("stall", small, lineage).ref, "live")
        if args.move == "alias":
            refs = [reg.push("stall", big, lineage).ref for _ in range(args.loads)]
            moves: list[Any] = [lambda ref=ref: reg.set_alias(ref, "live") for ref in refs]
            model = "stall:live"
        else:
            moves = [lambda: reg.push("stall", big, lineage) for _ in range(args.loads)]
            model = "stall"
        url = f"http://127.0.0.1:{args.port}"
        cmd = serve_command(
            args.base_model, tmp / "registry", args.port, "--max-lora-rank", str(args.rank),
            "--max-loras", "2", "--max-cpu-loras", "4",
        )  # fmt: skip
        with server_process(cmd, url, tmp / "serve.log", ready_path="/ready") as start_s:
            report["start_s"] = round(start_s, 1)
            load_before = os.getloadavg()[0]
            report.update(asyncio.run(drive(url, args, model, moves)))
            # other work on the machine shows here (the server and this client make about 2)
            report["loadavg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        if args.server_log:
            shutil.copyfile(tmp / "serve.log", args.server_log)
    report["ratios"] = ratios(report["groups"])
    write_result("bench_load_stall_reduced" if args.reduced else "bench_load_stall", report, args.out_dir)
    print(json.dumps({"groups": report["groups"], "ratios": report["ratios"]}, indent=2))


if __name__ == "__main__":
    main()
