"""`platform improve NAME`: the production loop as one recorded pipeline.

export -> train -> offline gates -> rollout, from the version `NAME:ALIAS` serves:
1. export what arrived since that version was published: review choices and thumbs as DPO pairs,
   thumbs as KTO rows, liked answers as SFT rows (`platform data export`);
2. train from the serving version (it is the init adapter, and the reference policy of DPO/KTO) with
   the objective the data supports (`auto`: pairs first, then labelled rows, then liked answers);
3. evaluate serving and candidate on held-out rows (default: the serving version's own held-out
   rows) and check the offline gates (`exact_match>=baseline-0.02`); a candidate that fails is
   tagged and goes no further;
4. start a canary rollout (a shadow phase first by default), which `platform serve` drives.
Too little new data is a clean skip. The serving alias never moves here: only a rollout that
passes its live gates promotes. The plan and the export and training steps are in the candidate's
lineage (`improve`); the later steps' outcomes are its tags (`improve:gates-passed`, ...), both shown
by `platform registry show`.

This package composes trainer, registry and serving.experiments, which never import each other.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import RegistryError
from registry.store import Registry, Version
from trainer.errors import TrainerError
from trainer.export import ExportKind

if TYPE_CHECKING:
    from serving.experiments.gates import OfflineGate
    from trainer.judge import JudgeSpec

KINDS: dict[str, ExportKind] = {"dpo": "pairs", "kto": "unpaired", "sft": "sft"}
"""Training objective -> the export kind it reads."""


class ImproveError(Exception):
    """A step of the pipeline failed; the serving version is untouched."""


@dataclass(frozen=True)
class ImproveSettings:
    alias: str = "prod"
    """The alias whose version is improved (and that a successful rollout moves)."""
    objective: str = "auto"
    """`auto`, `sft`, `dpo` or `kto`."""
    min_rows: int = 16
    """Fewer new rows than this for the objective: skip (nothing trained)."""
    eval_data: str | None = None
    """Held-out rows for the offline gates (default: the serving version's held-out rows)."""
    eval_gates: tuple[str, ...] = ("exact_match>=baseline-0.02", "general>=baseline-0.02")
    """Offline gates the candidate must pass against the serving version; `general` is the shipped
    general-capability set (GENERAL_GATE_ITEMS items), so a candidate that forgot fails."""
    eval_max_examples: int = 0
    shadow_first: bool = True
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    output_dir: str = "runs"
    train_overrides: tuple[str, ...] = ()
    """`key=value` training settings, as `platform train` takes them."""
    review_samples: int = 0
    """If > 0: a blind human review set of this many real prompts (logged traffic, else the held-out
    rows), serving vs candidate, made before the rollout starts (the two run side by side)."""
    on_drift: bool = False
    """Run only when `platform monitor` sees a signal of the serving version move (else a skip)."""
    judge: JudgeSpec | None = None
    """A model judge of serving vs candidate answers: with it, `judge>=0.5` joins the offline gates
    (unless they name a `judge` gate themselves)."""

    @property
    def gates(self) -> tuple[str, ...]:
        """The offline gates checked: `eval_gates`, plus `judge>=0.5` with a judge."""
        named = any(re.match(r"\s*judge\s*[<>]=", g) for g in self.eval_gates)
        return self.eval_gates if self.judge is None or named else (*self.eval_gates, "judge>=0.5")


@dataclass
class Plan:
    name: str
    serving: str
    since: float
    counts: dict[str, int]
    """New rows per export kind since the serving version: pairs, unpaired, sft."""
    objective: str | None
    skip: str | None = None

    def describe(self) -> list[str]:
        when = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        lines = [
            f"serving: {self.serving} (published {when})",
            "new since then: "
            + ", ".join(
                f"{n} {k}"
                for k, n in (
                    ("DPO pairs", self.counts["pairs"]),
                    ("KTO rows", self.counts["unpaired"]),
                    ("liked answers", self.counts["sft"]),
                )
            ),
        ]
        if self.skip:
            return [*lines, f"skip: {self.skip}"]
        return [
            *lines,
            f"1. export {self.counts[KINDS[self.objective or 'sft']]} {KINDS[self.objective or 'sft']} rows",
            f"2. train {self.name} with training.objective={self.objective} from {self.serving}",
            f"3. offline gates against {self.serving}",
            "4. canary rollout (driven by `platform serve`)",
        ]


@dataclass
class Outcome:
    plan: Plan
    candidate: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None


def make_plan(name: str, settings: ImproveSettings, registry_root: str | None) -> Plan:
    """What `improve` would do: the serving version and the rows that arrived since."""
    from trainer.export import ExportFilters, export

    serving = _serving(name, settings.alias, registry_root)
    since_s = max(time.time() - serving.created, 0.0)
    counts: dict[str, int] = {}
    kinds: tuple[tuple[ExportKind, ExportFilters], ...] = (
        ("pairs", ExportFilters(since_s=since_s)),
        ("unpaired", ExportFilters(since_s=since_s)),
        ("sft", ExportFilters(thumbs="up", since_s=since_s, reviewed=True)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind, filters in kinds:
            try:
                counts[kind] = export(name, Path(tmp) / f"{kind}.jsonl", filters, registry_root, kind).rows
            except TrainerError:
                counts[kind] = 0
    objective = _objective(settings, counts)
    skip = None
    moved = _drifted(name, serving.ref, registry_root) if settings.on_drift else None
    if moved == []:
        skip = f"no drift: no signal of {serving.ref} moved (platform monitor {name})"
    elif objective is None:
        skip = (
            f"too little new data since {serving.ref}: need {settings.min_rows} rows for "
            f"{'any objective' if settings.objective == 'auto' else settings.objective}"
        )
    return Plan(name, serving.ref, serving.created, counts, objective, skip)


def _drifted(name: str, version: str, registry_root: str | None) -> list[str]:
    """The signals of `version` that moved (monitor's defaults: first 3 days against the last day)."""
    from serving.experiments.drift import drift_report

    reg = Registry(registry_root)
    try:
        report = drift_report(reg.payloads(), name, reference_s=3 * 86400, window_s=86400)
    finally:
        reg.close()
    return [s.signal for d in report if d.version == version for s in d.moved]


def _serving(name: str, alias: str, registry_root: str | None) -> Version:
    reg = Registry(registry_root)
    try:
        return reg.get(f"{name}:{alias}", verify_files=False)
    except RegistryError as exc:
        raise ImproveError(f"{name}:{alias}: {exc}; improve starts from the version an alias serves") from exc
    finally:
        reg.close()


def _objective(settings: ImproveSettings, counts: dict[str, int]) -> str | None:
    order = ["dpo", "kto", "sft"] if settings.objective == "auto" else [settings.objective]
    for objective in order:
        if counts[KINDS[objective]] >= settings.min_rows:
            return objective
    return None


def improve(name: str, settings: ImproveSettings, registry_root: str | None, console: Any) -> Outcome:
    """Run the pipeline once; a step that fails stops it with the serving version untouched."""
    plan = make_plan(name, settings, registry_root)
    outcome = Outcome(plan)
    if plan.skip:
        outcome.stopped = plan.skip
        return outcome
    run_dir = Path(settings.output_dir) / f"improve-{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    data = _export(plan, settings, run_dir, registry_root, outcome)
    outcome.candidate = _train(plan, settings, data, run_dir, registry_root, outcome, console)
    passed = _gates(plan, settings, outcome.candidate, registry_root, outcome, console)
    reg = Registry(registry_root)
    try:
        reg.tag(outcome.candidate, "improve:gates-passed" if passed else "improve:gates-failed")
        if not passed:
            outcome.stopped = f"{outcome.candidate} failed an offline gate; {plan.serving} keeps serving"
            return outcome
        if settings.review_samples:
            _review(plan, settings, outcome.candidate, reg, registry_root, outcome)
            reg.tag(outcome.candidate, "improve:review-created")
        _rollout(plan, settings, outcome.candidate, reg, outcome)
        reg.tag(outcome.candidate, "improve:rollout-started")
    finally:
        reg.close()
    return outcome


def _export(plan: Plan, settings: ImproveSettings, run_dir: Path, root: str | None, outcome: Outcome) -> Path:
    from trainer.export import ExportFilters, export

    assert plan.objective is not None
    kind = KINDS[plan.objective]
    since_s = max(time.time() - plan.since, 0.0)
    thumbs = "up" if kind == "sft" else None
    out = run_dir / f"{kind}.jsonl"
    report = export(
        plan.name, out, ExportFilters(thumbs=thumbs, since_s=since_s, reviewed=kind == "sft"), root, kind
    )
    outcome.steps.append(
        {"step": "export", "outcome": "ok", "rows": report.rows, "kind": kind, "file": str(out)}
    )
    return out


def _train(
    plan: Plan,
    settings: ImproveSettings,
    data: Path,
    run_dir: Path,
    root: str | None,
    outcome: Outcome,
    console: Any,
) -> str:
    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    serving = _serving(plan.name, settings.alias, root)
    lora = serving.lineage.get("config", {}).get("lora", {})
    pinned = [f"lora.{k}={json.dumps(lora[k])}" for k in ("r", "alpha", "target_modules") if k in lora]
    config = load_config(
        None,
        [
            f"base_model={serving.base_model}",
            f"name={plan.name}",
            f"data.path={data}",
            f"init_adapter={serving.ref}",
            f"training.objective={plan.objective}",
            f"output_dir={run_dir}",
            *pinned,
            *settings.train_overrides,
        ],
    )
    result = run(config, console=console, registry=root)
    outcome.steps.append(
        {"step": "train", "outcome": "ok", "objective": plan.objective, "run_dir": str(result.run_dir)}
    )
    result.lineage["improve"] = {"plan": asdict(plan), "steps": list(outcome.steps)}
    (result.run_dir / "lineage.json").write_text(json.dumps(result.lineage, indent=2) + "\n")
    return publish(result, root)


GENERAL_GATE_ITEMS = 100
"""General-set items a `general...` gate evaluates (both versions, greedy, short answers)."""


def check_offline_gates(
    baseline: str,
    candidate: str,
    data: str | None,
    gates: Sequence[OfflineGate],
    registry_root: str | None,
    max_examples: int = 0,
    judge: JudgeSpec | None = None,
) -> list[tuple[bool, str]]:
    """Both versions evaluated on the held-out file (`platform eval`) when there is one, and on the
    shipped general set when a gate names `general` or `general.<category>` (its first
    `max_examples` items, else GENERAL_GATE_ITEMS); then each gate checked: (passed, reason with
    the numbers) per gate; a gate naming an unknown metric raises GateError.
    A `judge` gate (`judge>=0.5`) asks `judge` to compare the two versions' answers (both orders):
    its metric is the candidate's preference rate (ties half), the baseline's is the rest.
    `platform rollout start --eval-data/--eval-gate` and `improve` both gate with it."""
    from serving.experiments.gates import GateError
    from trainer.evaluate_versions import evaluate_refs, general_refs
    from trainer.general import METRIC as GENERAL
    from trainer.judge import METRIC as JUDGE
    from trainer.judge import judge_versions

    judged = [g for g in gates if g.metric == JUDGE]
    if judged and judge is None:
        raise GateError(f"--eval-gate {judged[0].text}: name the judge with --judge REF or --judge-url URL")
    base: dict[str, float] = {}
    cand: dict[str, float] = {}
    summary = ""
    if data is not None:
        results, examples = evaluate_refs(
            [baseline, candidate], data, registry_root, max_examples=max_examples
        )
        base, cand = dict(results[baseline].metrics), dict(results[candidate].metrics)
        if judged and judge is not None:
            answers = (results[baseline].predictions, results[candidate].predictions)
            report = judge_versions(judge, (baseline, candidate), examples, answers, registry_root)
            cand[JUDGE], base[JUDGE] = report.rate, 1 - report.rate
            summary = f"; {report.summary()}"
    if any(g.metric.split(".")[0] == GENERAL for g in gates):
        items = max_examples or GENERAL_GATE_ITEMS
        scores, _ = general_refs([baseline, candidate], registry_root, max_examples=items)
        base |= scores[baseline]
        cand |= scores[candidate]
    checked = []
    for gate in gates:
        ok, why = gate.check(base, cand)
        checked.append((ok, why + summary if gate.metric == JUDGE else why))
    return checked


def _gates(
    plan: Plan, settings: ImproveSettings, candidate: str, root: str | None, outcome: Outcome, console: Any
) -> bool:
    from serving.experiments.gates import GateError, parse_offline_gate

    with tempfile.TemporaryDirectory() as tmp:
        data = settings.eval_data or _heldout_file(plan.serving, root, Path(tmp))
        try:
            gates = [parse_offline_gate(text) for text in settings.gates]
            checked = check_offline_gates(
                plan.serving, candidate, data, gates, root, settings.eval_max_examples, settings.judge
            )
        except GateError as exc:
            raise ImproveError(str(exc)) from exc
    for ok, reason in checked:
        console.print(f"  {'pass' if ok else 'FAIL'}: {reason}")
    passed = all(ok for ok, _ in checked)
    reasons = [reason for _, reason in checked]
    outcome.steps.append({"step": "gates", "outcome": "passed" if passed else "failed", "reasons": reasons})
    return passed


def _heldout_file(serving: str, root: str | None, tmp: Path) -> str:
    """The serving version's held-out rows (its `predictions.jsonl`) as a prompt/completion file."""
    reg = Registry(root)
    try:
        folder = reg.get(serving).path
    finally:
        reg.close()
    predictions = folder / "predictions.jsonl"
    if not predictions.is_file():
        raise ImproveError(f"{serving} has no held-out rows (predictions.jsonl): give --eval-data FILE")
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    out = tmp / "heldout.jsonl"
    out.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["reference"]}) + "\n" for r in rows)
    )
    return str(out)


def _review(
    plan: Plan, settings: ImproveSettings, candidate: str, reg: Registry, root: str | None, outcome: Outcome
) -> None:
    """A blind review set of real prompts (logged traffic of NAME, else the held-out rows)."""
    from registry import reviews as rv
    from registry.rubric import load_rubric
    from trainer.data import load_examples
    from trainer.export import traffic_prompts
    from trainer.review_sample import build_items

    examples = traffic_prompts(reg, plan.name)
    source = f"traffic:{plan.name}"
    if not examples:
        with tempfile.TemporaryDirectory() as tmp:
            source = settings.eval_data or _heldout_file(plan.serving, root, Path(tmp))
            examples = load_examples(source)[0]
    items = build_items(examples, (plan.serving, candidate), root, samples=settings.review_samples)
    name = f"improve-{candidate.replace('@', '-v')}"
    spec = rv.ReviewSpec(plan.serving, candidate, load_rubric().to_dict(), 1, source)
    review = reg.reviews().create(name, spec, items)
    outcome.steps.append(
        {"step": "review", "outcome": "created", "review": review.name, "items": review.items}
    )


def _rollout(plan: Plan, settings: ImproveSettings, candidate: str, reg: Registry, outcome: Outcome) -> None:
    from serving.experiments.rollout import check, resolve_spec

    spec = resolve_spec(
        plan.name,
        candidate,
        plan.serving,
        settings.alias,
        steps=settings.steps,
        interval_s=settings.interval_s,
        shadow_first=settings.shadow_first,
    )
    r = reg.rollouts().create(plan.name, check(reg, plan.name, spec))
    outcome.steps.append(
        {"step": "rollout", "outcome": r.state, "baseline": plan.serving, "candidate": candidate}
    )
