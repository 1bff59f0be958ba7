"""`platform serve --replicas 2` as a user runs it: the HTTP endpoint in the `platform serve`
process, two engine replicas on Ray Serve (the test session's local Ray, `--ray-address`), one
Ray hop per request; SIGTERM drains, deletes the application and exits 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from registry.basemodels import resolve_base_model
from registry.store import Registry
from testkit.servers import wait_ready
from tests.serving.fixtures import free_port, random_adapter, serve_cmd, wait_until

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

from tests.serving.test_ray_serve import ADMIN, ask, clean_env  # noqa: E402


def test_replicas_behind_an_endpoint_in_the_serve_process(ray_serve: str, tmp_path: Path) -> None:
    from ray import serve

    from serving.cluster.ingress import APP_NAME

    base = resolve_base_model("tiny")
    lineage = {"base_model": base.id, "base_model_sha256": base.weights_sha256}
    registry = tmp_path / "registry"
    for i, name in enumerate(["alpha", "beta"]):
        Registry(str(registry)).push(
            name, random_adapter(tmp_path / name, 4 + i, ["q_proj", "v_proj"]), lineage
        )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    address = ray.get_runtime_context().gcs_address
    cmd = serve_cmd(registry, port, "--engine", "peft", "--dtype", "float32", "--replicas", "2")
    cmd += ["--ray-address", address, "--admin-key", "admin-secret-0123456789"]
    with clean_env(), (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, 180, "/ready")
        for model in ["alpha@1", "beta", "base"]:
            r = ask(url, model)
            assert r.status_code == 200, r.text
            if model != "base":
                assert r.json()["model"] == r.headers["x-adapter-version"] == model.removesuffix("@1") + "@1"
        assert ask(url, "gamma").status_code == 404
        replicas = httpx.get(f"{url}/admin/replicas", headers=ADMIN, timeout=30).json()["data"]
        assert sum(int(r["adapter_loads"]) for r in replicas) >= 2, replicas  # those that answered
        engines = serve.status().applications[APP_NAME].deployments["EngineReplica"]
        assert engines.replica_states.get("RUNNING") == 2, engines
        proc.terminate()
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        wait_until(lambda: APP_NAME not in serve.status().applications, 30)  # nothing left on Ray
    finally:
        if proc.poll() is None:
            proc.kill()
