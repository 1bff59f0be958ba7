"""`platform rollout ...`: canary rollouts of adapter versions that promote or roll back by themselves."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.judge_options import judge_options
from cli.options import DURATION, open_registry, registry_options
from cli.tables import print_records

if TYPE_CHECKING:
    from serving.experiments.gates import OfflineGate
    from trainer.judge import JudgeSpec

console = Console()


def parse_steps(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give percentages separated by commas, e.g. 5,25,50,100"
        ) from None
    if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps) or steps[-1] != 100:
        raise click.BadParameter(f"{value!r}: steps must rise within (0, 100] and end at 100")
    return steps


def _gates(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    from serving.experiments.gates import GateError, parse_gate

    out = {}
    for text in value:
        try:
            gate = parse_gate(text)
        except GateError as exc:
            raise click.BadParameter(str(exc)) from None
        out[gate.name] = gate.text.removeprefix(gate.name)
    return out


def _offline_gates(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[OfflineGate, ...]:
    from serving.experiments.gates import GateError, parse_offline_gate

    try:
        return tuple(parse_offline_gate(v) for v in value)
    except GateError as exc:
        raise click.BadParameter(str(exc)) from None


def _offline_preflight(
    baseline: str,
    candidate: str,
    data: str | None,
    gates: tuple[OfflineGate, ...],
    max_examples: int,
    registry_root: str | None,
    judge: JudgeSpec | None = None,
) -> None:
    """`platform eval` of both versions on the held-out file; any gate failing stops the rollout
    before it starts (no route, no traffic)."""
    from pipeline.improve import check_offline_gates
    from serving.experiments.gates import GateError, parse_offline_gate

    on = f"on {data}" if data else "on the general-capability set"
    console.print(Text(f"pre-flight: evaluating {baseline} and {candidate} {on}"), soft_wrap=True)
    defaults = ["exact_match>=baseline-0.02", *(["judge>=0.5"] if judge is not None else [])]
    checked = gates or tuple(parse_offline_gate(g) for g in defaults)
    try:
        results = check_offline_gates(baseline, candidate, data, checked, registry_root, max_examples, judge)
    except GateError as exc:
        raise click.BadParameter(str(exc), param_hint="--eval-gate") from None
    for ok, reason in results:
        console.print(Text(f"  {'pass' if ok else 'FAIL'}: {reason}"), soft_wrap=True)
    failed = [reason for ok, reason in results if not ok]
    if failed:
        raise click.ClickException(f"offline gate failed, rollout not started: {'; '.join(failed)}")


@click.group("rollout")
def rollout_group() -> None:
    """Canary rollouts: traffic moves to a candidate version in steps, gated on live evidence."""


@rollout_group.command("start")
@click.argument("name")
@click.option("--candidate", required=True, help="The version to roll out, e.g. support@4.")
@click.option("--baseline", help="The version it replaces (default NAME:ALIAS).")
@click.option(
    "--alias", default="prod", show_default=True, help="Alias moved to the candidate when promoted."
)
@click.option(
    "--steps", default="5,25,50,100", show_default=True, callback=parse_steps, help="Candidate weights, %."
)
@click.option("--interval", default="60s", show_default=True, type=DURATION, help="Time between decisions.")
@click.option(
    "--min-requests",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Requests per variant before a step (or the shadow phase) is judged; fewer: inconclusive, wait.",
)
@click.option(
    "--min-feedback",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Feedback events per variant before thumbs_up/score are judged in a step; fewer: those two "
    "gates are not judged and do not hold the step (unless every other gate is off).",
)
@click.option(
    "--max-wait", default="10m", show_default=True, type=DURATION, help="Inconclusive this long: pause."
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    callback=_gates,
    help="Margin of one gate, repeatable: error_rate<=+1pt, empty_rate<=+1pt, latency_p95<=1.5x, "
    "ttft_p95<=1.5x, length_p50<=2x, thumbs_up>=-5pt, score>=0.95x (the defaults), or NAME=off.",
)
@click.option(
    "--shadow-first",
    is_flag=True,
    help="Before step 1, a shadow phase: the candidate answers copies of requests (users get the "
    "baseline's) and is judged on errors, latency, TTFT, empty rate and length drift with the same "
    "--interval, --min-requests and --max-wait; pass: step 1; fail: rolled back.",
)
@click.option(
    "--shadow-share",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="With --shadow-first: the share of requests copied to the candidate.",
)
@click.option(
    "--eval-data",
    help="Pre-flight: evaluate baseline and candidate on this held-out file (JSONL or sample:NAME) first.",
)
@click.option(
    "--eval-gate",
    "eval_gates",
    multiple=True,
    callback=_offline_gates,
    help="With --eval-data: e.g. exact_match>=baseline-0.02, rougeL>=0.8, or judge>=0.5 (the share of rows "
    "a model judge prefers the candidate's answer, ties half; with --judge or --judge-url) (repeatable; "
    "default exact_match>=baseline-0.02, and judge>=0.5 with a judge); general>=baseline-0.02 scores "
    "the shipped general-capability set (no --eval-data needed).",
)
@click.option(
    "--eval-max-examples",
    default=0,
    type=click.IntRange(0),
    help="Evaluate only the first N rows (and N general-set items; 0: all rows, 100 items).",
)
@judge_options
@registry_options
@handle_errors
def start_cmd(
    name: str,
    candidate: str,
    baseline: str | None,
    alias: str,
    steps: tuple[float, ...],
    interval: float,
    min_requests: int,
    min_feedback: int,
    max_wait: float,
    gates: dict[str, str],
    shadow_first: bool,
    shadow_share: float,
    eval_data: str | None,
    eval_gates: tuple[OfflineGate, ...],
    eval_max_examples: int,
    judge: JudgeSpec | None,
    registry_root: str | None,
) -> None:
    """Start rolling out --candidate on the route NAME (`model="NAME"` traffic). Checks the candidate
    first; servers load it before it gets traffic, and `platform serve` (or `rollout watch`) decides.

    Every --interval, each gate compares the candidate with the baseline on the evidence since the
    step began: it passes when a one-sided test says the candidate is not worse beyond the gate's
    margin, fails when it is significantly worse beyond it, else is inconclusive. Any gate failing
    rolls back; an inconclusive gate, or fewer than --min-requests per variant, waits (--max-wait:
    pause). The feedback gates (thumbs_up, score) are judged only once both variants have
    --min-feedback feedback events in the step; before that they neither pass nor hold the step."""
    from serving.experiments.rollout import check, resolve_spec

    spec = resolve_spec(
        name,
        candidate,
        baseline,
        alias,
        steps=steps,
        interval_s=interval,
        min_requests=min_requests,
        min_feedback=min_feedback,
        max_wait_s=max_wait,
        gates=gates,
        shadow_first=shadow_first,
        shadow_share=shadow_share,
    )
    from trainer.general import METRIC as GENERAL

    if any(g.metric.split(".")[0] != GENERAL for g in eval_gates) and not eval_data:
        raise click.UsageError("--eval-gate needs --eval-data FILE (only `general` gates do without)")
    if judge is not None and not eval_data:
        raise click.UsageError("--judge/--judge-url need --eval-data FILE (the rows it judges)")
    if judge is None and any(g.metric == "judge" for g in eval_gates):
        raise click.UsageError("--eval-gate judge...: name the judge with --judge REF or --judge-url URL")
    reg = open_registry(registry_root)
    spec = check(reg, name, spec)  # the cheap checks before the evaluation
    if eval_data or eval_gates:
        _offline_preflight(
            spec.baseline, spec.candidate, eval_data, eval_gates, eval_max_examples, registry_root, judge
        )
    r = reg.rollouts().create(name, spec)
    console.print(
        Text(
            f"rollout {r.name}: {r.spec.baseline} -> {r.spec.candidate}, steps "
            f"{'shadow phase, ' if r.spec.shadow_first else ''}"
            f"{', '.join(f'{s:g}%' for s in r.spec.steps)}, every {r.spec.interval_s:g}s (pre-flight)"
        ),
        soft_wrap=True,
    )


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _event_record(e: Any) -> dict[str, str]:
    def n(variant: str) -> str:
        v = e.numbers.get(variant) or {}
        return f"{v.get('requests', '-')}" if v else "-"

    shadow = e.step < 0 and e.numbers.get("phase") == "shadow"
    return {
        "time": _clock(e.ts),
        "step": "shadow" if shadow else str(e.step + 1),
        "weight": f"{e.weight:g}%",
        "decision": e.decision,
        "base/cand": f"{n('baseline')}/{n('candidate')}",
        "reason": e.reason or "",
    }


@rollout_group.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--png", type=click.Path(dir_okay=False), help="Plot weights and gated metrics over time here.")
@registry_options
@handle_errors
def status_cmd(name: str, as_json: bool, png: str | None, registry_root: str | None) -> None:
    """State of rollout NAME and its timeline of decisions (with per-variant numbers)."""
    from dataclasses import asdict

    reg = open_registry(registry_root)
    r = reg.rollouts().get(name)
    events = reg.rollouts().events(name)
    if png:
        from serving.experiments.rollout import plot

        plot(r, events, Path(png))
    if as_json:
        out = {**asdict(r), "phase": r.phase, "weight": r.weight, "events": [asdict(e) for e in events]}
        click.echo(json.dumps(out, indent=2, default=str))
        return
    head = f"rollout {r.name}: {r.state}, {r.spec.baseline} -> {r.spec.candidate}, candidate at {r.weight:g}%"
    if r.phase == "shadow":
        head += f" (shadow phase: it answers copies of {r.spec.shadow_share:.0%} of requests)"
    console.print(Text(head + (f" ({r.reason})" if r.reason else "")), soft_wrap=True)
    print_records(console, "timeline", [_event_record(e) for e in events])


@rollout_group.command("list")
@registry_options
@handle_errors
def list_cmd(registry_root: str | None) -> None:
    """Every rollout and its state."""

    rows = [
        {
            "rollout": r.name,
            "state": r.state,
            "candidate": r.spec.candidate,
            "baseline": r.spec.baseline,
            "weight": f"{r.weight:g}%",
            "since": _clock(r.updated),
        }
        for r in open_registry(registry_root).rollouts().list_rollouts()
    ]
    print_records(console, "rollouts", rows)


def _simple(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text)
    @click.argument("name")
    @registry_options
    @handle_errors
    def cmd(name: str, registry_root: str | None) -> None:
        from serving.experiments import rollout as ctl

        r = getattr(ctl, action)(open_registry(registry_root), name)
        console.print(Text(f"rollout {r.name}: {r.state}, candidate at {r.weight:g}%"), soft_wrap=True)

    return cmd


rollout_group.add_command(_simple("pause", "Hold rollout NAME at its step (weights stay)."))
rollout_group.add_command(_simple("resume", "Resume a paused rollout NAME with a fresh evidence window."))
rollout_group.add_command(_simple("abort", "Stop rollout NAME: candidate weight 0 at once, the alias stays."))


@rollout_group.command("watch")
@click.option(
    "--max-seconds",
    type=DURATION,
    help="Stop after this long, e.g. 90 or 10m (default: run until interrupted).",
)
@registry_options
@handle_errors
def watch_cmd(max_seconds: float | None, registry_root: str | None) -> None:
    """Run the rollout controller in this process (instead of, or beside, `platform serve`:
    a lease in the catalog lets exactly one controller act)."""
    from serving.experiments.rollout import TICK_S, controller_id, tick

    reg = open_registry(registry_root)
    holder = f"{controller_id()}:watch"
    end = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        while end is None or time.monotonic() < end:
            for line in tick(reg, holder):
                console.print(Text(f"{_clock(time.time())} {line}"), soft_wrap=True)
            time.sleep(TICK_S)
    except KeyboardInterrupt:
        pass
    finally:
        reg.rollouts().release_lease(holder)
