"""`platform ab report`: per-variant evidence, differences with significance tests, a verdict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from registry.errors import NotFoundError
from registry.routes import get_route
from registry.store import Registry
from serving.experiments import stats

MIN_FEEDBACK = 30
MIN_REQUESTS = 100
ALPHA = 0.05


def _est(e: stats.Estimate | None) -> dict[str, float] | None:
    return None if e is None else asdict(e)


def _variant_stats(reqs: list[dict[str, Any]], fb: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in reqs if r["status"] == "ok"]
    lat = [r["latency_s"] for r in ok if r["latency_s"] is not None]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    scores = [f["score"] for f in fb if f["score"] is not None]
    thumbs = [f["thumbs"] for f in fb if f["thumbs"] is not None]
    return {
        "requests": len(reqs),
        "errors": len(reqs) - len(ok),
        "error_rate": (len(reqs) - len(ok)) / len(reqs) if reqs else None,
        "latency_p50_s": stats.percentile(lat, 50),
        "latency_p95_s": stats.percentile(lat, 95),
        "ttft_p50_s": stats.percentile(ttft, 50),
        "ttft_p95_s": stats.percentile(ttft, 95),
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in reqs),
        "completion_tokens": sum(r["completion_tokens"] or 0 for r in reqs),
        "feedback": len(fb),
        "score": _est(stats.mean_ci(scores)),
        "thumbs_up_rate": _est(stats.proportion_ci(sum(thumbs), len(thumbs))),
        "_lat": lat,
        "_scores": scores,
        "_thumbs": thumbs,
        "_ok": len(ok),
    }


def _test(t: stats.Test | None) -> dict[str, Any] | None:
    return None if t is None else {**asdict(t), "significant": t.p_value < ALPHA}


def build_report(registry_root: str | Path | None, route: str) -> dict[str, Any]:
    reg = Registry(registry_root)
    reqs, fb = reg.evidence().load(route)
    try:
        current = get_route(reg, route)
        order = [v.ref for v in current.variants]
        weights = {v.ref: v.weight for v in current.variants}
        active = True
    except NotFoundError:
        order, weights, active = [], {}, False
    live = [r for r in reqs if not r["shadow"]]
    for r in live:
        if r["variant"] not in order:
            order.append(r["variant"])
    if not order and not reqs:
        raise NotFoundError(f"no A/B route named {route!r} and no evidence recorded for it")
    variants = {
        v: _variant_stats([r for r in live if r["variant"] == v], [f for f in fb if f["variant"] == v])
        for v in order
    }
    shadow = {}
    for v in sorted({r["variant"] for r in reqs if r["shadow"]}):
        shadow[v] = _variant_stats([r for r in reqs if r["shadow"] and r["variant"] == v], [])
    comparisons = []
    control = order[0] if order else ""
    for v in order[1:]:
        a, b = variants[control], variants[v]
        comparisons.append(
            {
                "control": control,
                "variant": v,
                "thumbs_up": _test(
                    stats.two_proportion_z(
                        sum(a["_thumbs"]), len(a["_thumbs"]), sum(b["_thumbs"]), len(b["_thumbs"])
                    )
                ),
                "score": _test(stats.welch_z(a["_scores"], b["_scores"])),
                "latency": _test(stats.mann_whitney(a["_lat"], b["_lat"])),
                "error_rate": _test(
                    stats.two_proportion_z(a["errors"], a["requests"], b["errors"], b["requests"])
                ),
            }
        )
    report = {
        "route": route,
        "active": active,
        "weights": weights,
        "variants": {k: {x: y for x, y in s.items() if not x.startswith("_")} for k, s in variants.items()},
        "shadow": {k: {x: y for x, y in s.items() if not x.startswith("_")} for k, s in shadow.items()},
        "comparisons": comparisons,
    }
    report["verdict"] = verdict(report, variants)
    return report


def verdict(report: dict[str, Any], variants: dict[str, dict[str, Any]]) -> str:
    if len(variants) < 2:
        return "only one variant has traffic: nothing to compare yet"
    short = [
        f"{v} ({s['feedback']} feedback, {s['requests']} requests)"
        for v, s in variants.items()
        if s["feedback"] < MIN_FEEDBACK and s["requests"] < MIN_REQUESTS
    ]
    lines = []
    if short:
        lines.append(
            f"not enough data yet: need >= {MIN_FEEDBACK} feedback or >= {MIN_REQUESTS} requests per "
            f"variant; short: {', '.join(short)}"
        )
    for c in report["comparisons"]:
        for metric in ("thumbs_up", "score", "latency", "error_rate"):
            t = c[metric]
            if t and t["significant"]:
                better = t["difference"] > 0 if metric in ("thumbs_up", "score") else t["difference"] < 0
                lines.append(
                    f"{c['variant']} is {'better' if better else 'worse'} than {c['control']} on {metric} "
                    f"(difference {t['difference']:+.4g}, p={t['p_value']:.3g}, {t['name']})"
                )
    if not lines:
        lines.append("no significant difference between variants (alpha 0.05)")
    return "; ".join(lines)


def plot(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    rows = [report["variants"][n] for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=100)
    axes[0].bar(names, [s["requests"] for s in rows])
    axes[0].set_title("requests")
    p50 = [s["latency_p50_s"] or 0 for s in rows]
    p95 = [s["latency_p95_s"] or 0 for s in rows]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], p95, width=0.4, label="p95")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("latency (s)")
    axes[1].legend()
    rates = [s["thumbs_up_rate"] or s["score"] for s in rows]
    means = [r["mean"] if r else 0 for r in rates]
    errs = [
        [r["mean"] - r["low"] if r else 0 for r in rates],
        [r["high"] - r["mean"] if r else 0 for r in rates],
    ]
    axes[2].bar(names, means, yerr=errs, capsize=6)
    axes[2].set_title("feedback (mean, 95% CI)")
    fig.suptitle(f"A/B route {report['route']}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
