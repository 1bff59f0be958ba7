"""Several `platform serve` replicas on one PostgreSQL catalog and one artifact folder.

Each replica is a real server process (`--engine peft` on the tiny model: what is tested is how
replicas follow the shared catalog, which sits above the engine; two vLLM engines would double the
suite's start-up time on 2 cores). A third process (the test, through the registry and the CLI)
pushes versions, moves aliases and routes; PostgreSQL is really stopped and started again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.basemodels import resolve_base_model
from registry.routes import start_route
from registry.store import Registry
from testkit.postgres import PASSWORD, Postgres
from testkit.servers import server_process
from tests.serving.fixtures import free_port, random_adapter, serve_cmd, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    url: str
    """Catalog URL (with its password: never printed by the platform)."""
    artifacts: Path
    replicas: list[str]
    logs: list[Path]
    adapter_dirs: list[Path] = field(default_factory=list)

    def registry(self) -> Registry:
        return Registry(self.url, self.artifacts)

    def push(self, name: str, i: int) -> str:
        base = resolve_base_model("tiny")
        lineage = {"base_model": base.id, "base_model_sha256": base.weights_sha256}
        return self.registry().push(name, self.adapter_dirs[i % len(self.adapter_dirs)], lineage).ref


def ask(url: str, model: str, user: str = "u") -> httpx.Response:
    body = {"model": model, "prompt": "hello", "max_tokens": 2, "temperature": 0, "user": user}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


@pytest.fixture(scope="module")
def cluster(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    c = Cluster(postgres.new_database(), root / "artifacts", [], [])
    c.adapter_dirs = [random_adapter(root / f"a{r}", r, ["q_proj", "v_proj"]) for r in (4, 8)]
    c.push("support", 0)
    with ExitStack() as stack:
        for i in range(2):
            port, log = free_port(), root / f"replica{i}.log"
            cmd = serve_cmd(
                c.url,  # type: ignore[arg-type]
                port,
                "--artifacts",
                str(c.artifacts),
                "--engine",
                "peft",
                "--dtype",
                "float32",
            )
            stack.enter_context(server_process(cmd, f"http://127.0.0.1:{port}", log, ready_path="/ready"))
            c.replicas.append(f"http://127.0.0.1:{port}")
            c.logs.append(log)
        yield c
    for log in c.logs:  # the password never reaches a log line
        assert PASSWORD not in log.read_text()


class Loop:
    """A steady request loop against every replica, recording each answer's status."""

    def __init__(self, urls: list[str], model: str) -> None:
        self.urls, self.model = urls, model
        self.statuses: Counter[int] = Counter()
        self.served: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for n in range(10_000):  # bounded
            if self._stop.is_set():
                return
            url = self.urls[n % len(self.urls)]
            r = ask(url, self.model, user=f"loop{n}")
            self.statuses[r.status_code] += 1
            if r.status_code == 200:
                self.served.append((time.monotonic(), url, r.json()["model"]))

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_a_push_and_an_alias_move_reach_every_replica(cluster: Cluster) -> None:
    reg = cluster.registry()
    reg.set_alias("support@1", "prod")
    for url in cluster.replicas:
        wait_until(lambda url=url: ask(url, "support:prod").json()["model"] == "support@1", 5)
    with Loop(cluster.replicas, "support:prod") as loop:
        wait_until(lambda: len(loop.served) >= 4, 30)
        new = cluster.push("support", 1)
        pushed = time.monotonic()
        for url in cluster.replicas:  # latest: every replica serves the new version at once
            assert ask(url, "support").json()["model"] == new
        reg.set_alias(new, "prod")
        moved = time.monotonic()
        for url in cluster.replicas:
            wait_until(lambda url=url: ask(url, "support:prod").json()["model"] == new, 2.0)
        wait_until(lambda: sum(1 for t, _, m in loop.served if t > moved and m == new) >= 4, 30)
    assert set(loop.statuses) == {200}, loop.statuses  # zero failed requests during the change
    assert time.monotonic() - pushed < 60


def test_ab_evidence_from_every_replica_is_in_one_report(cluster: Cluster) -> None:
    reg = cluster.registry()
    v1, v2 = "support@1", cluster.push("support", 1)
    start_route(reg, "abx", [(v1, 50), (v2, 50)])
    for url in cluster.replicas:
        wait_until(lambda url=url: ask(url, "abx").status_code == 200, 5)
    sent = Counter()
    for n in range(20):
        url = cluster.replicas[n % 2]
        assert ask(url, "abx", user=f"user{n}").status_code == 200
        sent[url] += 1

    def report() -> dict:  # type: ignore[type-arg]
        out = CliRunner().invoke(cli, ["ab", "report", "abx", "--json", "--registry", cluster.url])
        assert out.exit_code == 0, out.output
        import json

        return json.loads(out.output)  # type: ignore[no-any-return]

    # 2 warm-up requests (one per replica) + 20: every one of them, from both replicas
    wait_until(lambda: sum(v["requests"] for v in report()["variants"].values()) == 22, 10)
    assert PASSWORD not in CliRunner().invoke(cli, ["registry", "list", "--registry", cluster.url]).output


def test_a_database_outage_keeps_resolved_references_serving(cluster: Cluster, postgres: Postgres) -> None:
    reg = cluster.registry()
    start_route(reg, "outage", [("support@1", 100)])
    for url in cluster.replicas:
        wait_until(lambda url=url: ask(url, "outage").status_code == 200, 5)
        assert ask(url, "support@1").status_code == 200
    before = {url: httpx.get(f"{url}/metrics").text for url in cluster.replicas}
    assert before
    postgres.stop()
    try:
        statuses: Counter[int] = Counter()
        routed = 0
        down = time.monotonic()
        while time.monotonic() - down < 5:  # 5 s without a database
            for url in cluster.replicas:
                statuses[ask(url, "support@1").status_code] += 1  # resolved and loaded before
                r = ask(url, "outage", user=f"o{routed}")
                statuses[r.status_code] += 1
                routed += r.status_code == 200
                fresh = ask(url, "support@2")  # never resolved here: cannot be answered now
                statuses[fresh.status_code] += 1
                assert fresh.status_code == 503 and fresh.headers["retry-after"]
                assert PASSWORD not in fresh.text and "127.0.0.1" not in fresh.text
        health = httpx.get(f"{cluster.replicas[0]}/health").json()
        assert health["catalog"] == "unavailable" and health["status"] == "degraded"
    finally:
        postgres.start()
    assert 500 not in statuses and statuses[200] > 0 and statuses[503] > 0, statuses
    for url in cluster.replicas:
        wait_until(lambda url=url: ask(url, "support@2").status_code == 200, 15)
        wait_until(lambda url=url: httpx.get(f"{url}/health").json()["catalog"] == "ok", 15)
    # the evidence buffered during the outage is in the report now
    wait_until(lambda: len(reg.evidence().load("outage")[0]) >= routed + 2, 30)
