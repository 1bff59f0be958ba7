"""How many requests can run at once with `--max-loras` slots: a closed-loop simulation.

    python -m loadtests.slot_bound                     # bench.py --many 64: 16 users, 8 slots, Zipf 1.1
    python -m loadtests.slot_bound --adapters 64 --slots 8 --users 16 --steps 60000

Each of `--users` users sends a request for an adapter drawn with power-law popularity (weight
k^-zipf for the k-th adapter, as loadtests/locustfile.py draws them), waits for it to end (one token
per engine step, --tokens-min..--tokens-max tokens, first token --lag steps after arrival) and sends
the next. Every step runs the requests of at most `--slots` adapters: the adapters with the most
requests ready (ties: the one waiting longest), re-chosen every step with no cost for a switch,
which no real admission can beat. Prints the mean number of requests running per step with that
many slots and with no limit, and their ratio: the most the throughput of bench.py's 64-adapter
scenario can be of its all-resident one, at equal step time.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter


def mean_running(args: argparse.Namespace, slots: int) -> float:
    rnd = random.Random(args.seed)
    weights = [k**-args.zipf for k in range(1, args.adapters + 1)]

    def request(now: int) -> dict[str, int]:
        adapter = rnd.choices(range(args.adapters), weights=weights)[0]
        return {
            "adapter": adapter,
            "left": rnd.randint(args.tokens_min, args.tokens_max),
            "ready": now + args.lag,
        }

    requests = [request(0) for _ in range(args.users)]
    running = 0
    for now in range(args.steps):
        ready = [r for r in requests if r["ready"] <= now]
        counts = Counter(r["adapter"] for r in ready)
        since = {r["adapter"]: r["ready"] for r in reversed(ready)}  # the longest waiting one's
        chosen = set(sorted(counts, key=lambda a: (-counts[a], since[a]))[:slots])
        for r in [r for r in ready if r["adapter"] in chosen]:
            running += 1
            r["left"] -= 1
            if r["left"] == 0:
                requests.remove(r)
                requests.append(request(now + 1))
    return running / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--tokens-min", type=int, default=20)
    parser.add_argument("--tokens-max", type=int, default=32)
    parser.add_argument(
        "--lag", type=int, default=2, help="steps from a request's arrival to its first token"
    )
    parser.add_argument("--steps", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bounded, free = mean_running(args, args.slots), mean_running(args, args.adapters)
    print(
        f"running per step: {bounded:.2f} with {args.slots} slots, {free:.2f} without: {bounded / free:.3f}x"
    )


if __name__ == "__main__":
    main()
