"""`platform train --workers N`: the recipe on Ray Train workers of the session's Ray cluster.

The driver is a `platform train` subprocess that joins the cluster by its address (as on a real
cluster); the workers are started by that cluster's raylet, a child of this test process, so the
test finds (and kills) only its own workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from testkit.servers import wait_until

pytest.importorskip("ray")

ROOT = Path(__file__).parents[2]
TRAIN = [
    "--base-model",
    "tiny",
    "--name",
    "raytiny",
    "training.batch_size=4",
    "training.grad_accum=1",
    "eval.max_examples=4",
    "eval.max_new_tokens=4",
    "eval.compare_base=false",
    "data.max_seq_len=96",
    "data.overlong=truncate",
]
DRIVER_TIMEOUT_S = 600


def start_driver(tmp_path: Path, address: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "cli.main", "train", "--workers", "2", "--ray-address", address]
    command += ["--output-dir", str(tmp_path / "runs"), "--registry", str(tmp_path / "reg"), *TRAIN, *args]
    log = (tmp_path / "driver.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], tmp_path: Path, exit_code: int = 0) -> str:
    try:
        proc.wait(timeout=DRIVER_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "driver.log").read_text()
    assert proc.returncode == exit_code, output[-6000:]
    return output


def versions(tmp_path: Path) -> list[dict[str, object]]:
    from registry.store import Registry

    registry = Registry(tmp_path / "reg")
    try:
        return [
            {"ref": v.ref, "lineage": json.loads((v.path / "lineage.json").read_text())}
            for v in registry.list_versions()
        ]
    finally:
        registry.close()


def our_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of this session's cluster (descendants of this process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::RayTrainWorker"):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_publishes_once(
    ray_cluster: str, tmp_path: Path
) -> None:
    """Two Ray Train workers, one SIGKILLed after the first committed checkpoint: the run resumes
    from it and the driver publishes one version for both workers (one test for both, to share the
    driver's start)."""
    proc = start_driver(tmp_path, ray_cluster, "training.max_steps=6", "training.save_every=1")
    log = tmp_path / "driver.log"

    def committed() -> bool:  # every worker reported it, so a restart resumes from it
        text = log.read_text()
        done = "checkpoint committed: checkpoint-1 (" in text
        assert done or proc.poll() is None, text[-6000:]  # the driver died before it
        return done

    wait_until(committed, DRIVER_TIMEOUT_S)
    workers = our_train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1].pid, signal.SIGKILL)
    output = finish(proc, tmp_path)

    [version] = versions(tmp_path)
    assert version["ref"] == "raytiny@1" and "registered as raytiny@1" in output
    lineage = version["lineage"]
    assert isinstance(lineage, dict)
    resumed = lineage["distributed"]["ray"]["resumed_from"]
    assert resumed is not None and resumed.startswith("checkpoint-"), resumed
    assert lineage["training"]["steps"] == 6
    launch = lineage["distributed"]
    assert launch["world_size"] == 2 and launch["strategy"] == "ddp" and launch["launcher"] == "ray-train"
    assert launch["ray"]["run"].startswith("raytiny-")
    assert len(list((tmp_path / "runs").iterdir())) == 1  # one run folder for both workers
    # the checkpoints were only for resuming: the published version holds the run
    assert list((tmp_path / "reg" / "train-checkpoints").iterdir()) == []
    restarted = output.split("checkpoint committed: checkpoint-1 (", 1)[1]
    assert "checkpoint committed: checkpoint-1 (" not in restarted  # step 1 was not trained again


def test_a_mistake_in_the_data_ends_the_run_with_its_message_and_no_restart(
    ray_cluster: str, tmp_path: Path
) -> None:
    data = tmp_path / "tickets.jsonl"
    data.write_text('{"prompt": "Reset my password", "completion": "Use the link."}\n{not json\n')
    output = finish(start_driver(tmp_path, ray_cluster, "--data", str(data)), tmp_path, exit_code=1)
    assert "tickets.jsonl:2" in output and "invalid JSON" in output, output[-6000:]
    assert "Traceback" not in output
    assert "failed (after up to" not in output  # returned by the workers, not a failure Ray retried
    assert not (tmp_path / "reg").exists() or versions(tmp_path) == []
