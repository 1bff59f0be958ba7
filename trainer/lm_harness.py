"""EleutherAI's lm-evaluation-harness (`lm_eval`) against a registry version, offline.

Two ways to run the same tasks on the same version:
- in this process: lm-eval's own Hugging Face model (`hf`) on the version's base model folder with
  the adapter folder as `peft=` (after the base model's weights were checked, `trainer.loading`);
- through a running `platform serve`: lm-eval's `local-completions` (or, with `chat`,
  `local-chat-completions`) model with `model=name@N` and `base_url` at the server's /v1.
  Our /v1/completions refuses `echo` (no prompt logprobs), so through a server only
  `generate_until` tasks run; loglikelihood (multiple-choice) tasks need the in-process path.

Nothing is fetched from a hub: the run sets HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, so a task must read
local files (`dataset_path: json` with `dataset_kwargs.data_files`), defined in a folder of task
YAMLs (`tasks_dir`, lm-eval's include path). Results go into the registry as an evaluation of the
version (`registry.evaluations`): its files and lineage are immutable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

KIND = "lm-eval"
"""The `kind` of the evaluation rows this module writes."""
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class HarnessRun:
    """One lm-eval run of one version: per task its metrics, their standard errors and the answers."""

    ref: str
    mode: str
    """`in-process` or `server <url>`."""
    results: dict[str, dict[str, float]]
    stderr: dict[str, dict[str, float]]
    samples: dict[str, int]
    responses: dict[str, list[str]] = field(default_factory=dict)
    """Per task, the filtered answer of each document, in document order."""
    settings: dict[str, Any] = field(default_factory=dict)
    task_versions: dict[str, Any] = field(default_factory=dict)
    evaluation_id: int | None = None
    """The registry row it was recorded as (None for `base`, or before `record`)."""

    def record(self) -> dict[str, Any]:
        """What the registry keeps (`EvaluationStore.add`): everything but the answers."""
        from importlib.metadata import version

        return {
            "harness_version": version("lm_eval"),
            "mode": self.mode,
            "results": self.results,
            "stderr": self.stderr,
            "samples": self.samples,
            "settings": self.settings,
            "task_versions": self.task_versions,
        }


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub and datasets offline inside the block: env vars for code that reads them late, and the
    constants `huggingface_hub` and `datasets` read at import for code already imported."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    saved = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def folder_sha256(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file under `folder` (task YAMLs and data)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\x00" + path.read_bytes())
    return h.hexdigest()


def task_manager(tasks: list[str], tasks_dir: str | None) -> Any:
    """lm-eval's TaskManager with `tasks_dir` included; unknown task names raise TrainerError."""
    from lm_eval.tasks import TaskManager

    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise TrainerError(f"--lm-eval-tasks-dir {tasks_dir}: no such folder")
    manager = TaskManager(include_path=tasks_dir) if tasks_dir else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" in {tasks_dir} or" if tasks_dir else ""
        raise TrainerError(
            f"unknown lm-eval task(s) {', '.join(unknown)}: not defined{where} among lm-eval's tasks; "
            "define a task in a YAML file and pass its folder with --lm-eval-tasks-dir"
        )
    return manager


def model_and_args(
    ref: str, registry_root: str | None, server: str | None, chat: bool
) -> tuple[str, dict[str, Any]]:
    """lm-eval's model name and model_args for `ref`: its HF model with the adapter as `peft`, or a
    local-(chat-)completions client of the server. The base model folder also gives the tokenizer
    the server client uses for the end-of-text stop string."""
    from trainer.loading import resolve_adapters

    base, (version,) = resolve_adapters([ref], registry_root)
    if server:
        url = server.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
        args: dict[str, Any] = {"model": ref, "base_url": url, "max_retries": 3, "num_concurrent": 1}
        if chat:  # messages are sent as JSON; the server applies the chat template
            args["tokenizer_backend"] = "none"
        else:  # prompts are sent as text (tokenized_requests=False): the server tokenizes as it serves
            args |= {
                "tokenizer_backend": "huggingface",
                "tokenizer": str(base.path),
                "tokenized_requests": False,
            }
        return ("local-chat-completions" if chat else "local-completions"), args
    import torch

    args = {
        "pretrained": str(base.path),
        "dtype": "float32",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if version is not None:
        args["peft"] = str(version.path)
    return "hf", args


def run_lm_eval(
    ref: str,
    tasks: list[str],
    registry_root: str | None,
    *,
    server: str | None = None,
    tasks_dir: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    chat: bool = False,
) -> HarnessRun:
    """Run lm-eval `tasks` on `ref` (a version or `base`), greedy as each task's YAML says."""
    try:
        import lm_eval
    except ImportError as exc:
        raise TrainerError(
            f"--lm-eval needs lm-evaluation-harness: pip install 'lora-platform[lm-eval]' ({exc})"
        ) from exc

    with offline():
        manager = task_manager(tasks, tasks_dir)
        model, model_args = model_and_args(ref, registry_root, server, chat)
        try:
            out = lm_eval.simple_evaluate(
                model=model,
                model_args=model_args,
                tasks=tasks,
                task_manager=manager,
                limit=limit or None,
                num_fewshot=num_fewshot,
                batch_size=1,
                log_samples=True,
                apply_chat_template=chat,
            )
        except (OSError, ConnectionError, ValueError, RuntimeError) as exc:
            # datasets' offline and not-found errors, refused requests (e.g. echo/logprobs
            # of a loglikelihood task through a server), and bad task YAMLs
            raise TrainerError(
                f"lm-eval {', '.join(tasks)} on {ref}: {type(exc).__name__}: {exc} (tasks must read local "
                "files: dataset_path: json with dataset_kwargs.data_files; through a server only "
                "generate_until tasks run)"
            ) from exc
    settings = {"limit": limit or None, "num_fewshot": num_fewshot, "chat": chat, "model": model}
    if tasks_dir:
        settings |= {
            "tasks_dir": str(Path(tasks_dir).resolve()),
            "tasks_dir_sha256": folder_sha256(Path(tasks_dir)),
        }
    return parse_results(out, ref, f"server {server}" if server else "in-process", settings)


def parse_results(out: dict[str, Any], ref: str, mode: str, settings: dict[str, Any]) -> HarnessRun:
    """lm-eval's result dict as a HarnessRun: `metric,filter` keys become `metric` (filter `none`)
    or `metric (filter)`; standard errors are kept apart."""
    results: dict[str, dict[str, float]] = {}
    stderr: dict[str, dict[str, float]] = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            if "," not in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            target = stderr if metric.endswith("_stderr") else results
            metric = metric.removesuffix("_stderr")
            name = metric if filt == "none" else f"{metric} ({filt})"
            target.setdefault(task, {})[name] = float(value)
    responses = {
        task: [str(s["filtered_resps"][0]) for s in sorted(rows, key=lambda s: s["doc_id"])]
        for task, rows in (out.get("samples") or {}).items()
    }
    samples = {task: int(n.get("effective", 0)) for task, n in (out.get("n-samples") or {}).items()}
    return HarnessRun(ref, mode, results, stderr, samples, responses, settings, dict(out.get("versions", {})))


def record_run(run: HarnessRun, registry_root: str | None) -> HarnessRun:
    """Store the run as an evaluation of its version (not for `base`, which is no version)."""
    from registry.store import Registry
    from trainer.loading import BASE

    if run.ref == BASE:
        return run
    registry = Registry(registry_root)
    try:
        name, version = registry.resolve(run.ref)
        run.evaluation_id = registry.evaluations().add(name, version, KIND, run.record())
    finally:
        registry.close()
    return run
