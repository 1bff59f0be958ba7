"""Reliability and security against real servers: disconnects, overload, caps, keys, drain, crashes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from registry.store import Registry
from tests.serving.fixtures import Server, free_port, is_ready, metric, serve_cmd, wait_until

ROOT = Path(__file__).parents[2]


LONG = {
    "model": "support@1",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 480,
    "temperature": 1.0,
    "seed": 1,
}


def test_a_client_that_disconnects_mid_stream_gets_its_request_aborted(server: Server) -> None:
    tokens_before = metric(server.url, 'lora_tokens_total{kind="completion",model="support@1"')
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=30
    ) as r:
        lines = r.iter_lines()
        next(lines)  # the role chunk
        next(lines)
    took = wait_until(lambda: metric(server.url, "lora_engine_requests") == 0, 5)
    print(f"\nstream abort after disconnect: {took:.2f}s")
    assert took < 1.5
    produced = metric(server.url, 'lora_tokens_total{kind="completion",model="support@1"') - tokens_before
    assert produced < 480  # aborted, not run to the end


def test_a_client_that_disconnects_mid_request_gets_its_request_aborted(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        body = httpx.Request("POST", server.url + "/v1/chat/completions", json=LONG)
        raw = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.read())}\r\n\r\n"
        ).encode() + body.read()
        sock.sendall(raw)
        wait_until(lambda: metric(server.url, "lora_engine_requests") >= 1, 5)
    took = wait_until(lambda: metric(server.url, "lora_engine_requests") == 0, 5)
    print(f"\nnon-stream abort after disconnect: {took:.2f}s")
    assert took < 1.5


def test_body_size_cap_and_the_worker_keeps_serving(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/completions", content=b"x" * (5 << 20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    ok = httpx.post(
        server.url + "/v1/completions", json={"model": "support@1", "prompt": "hi", "max_tokens": 2}
    )
    assert ok.status_code == 200


def test_admin_routes_are_off_without_an_admin_key(server: Server) -> None:
    r = httpx.post(server.url + "/admin/adapters/load", json={"model": "support@1"})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]


def test_reading_server_survives_a_writer_killed_mid_push(server: Server, adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.registry.test_store import _SLOW_PUSH

    registry, _ = adapters
    src = Registry(registry).get("contact@1")
    failures: list[str] = []
    served: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            r = httpx.post(
                server.url + "/v1/chat/completions",
                timeout=60,
                json={"model": "crash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            served.append(r.status_code)
            if r.status_code not in (200, 404):  # 404 until the first version lands
                failures.append(r.text)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SLOW_PUSH.replace(
                '{"base_model": "m", "base_model_sha256": "s"}', "__import__('json').loads(sys.argv[3])"
            ),
            str(registry),
            str(src.path),
            __import__("json").dumps(src.lineage),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    staging = registry / ".staging"
    # versions served while pushes go on, and one push in the middle of its copy when it is killed
    wait_until(lambda: 200 in served and staging.is_dir() and any(staging.iterdir()), 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after_kill = len(served)
    wait_until(lambda: len(served) >= after_kill + 4, 30)  # and the server keeps answering
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    # this test's versions (other tests share the session registry, and one tampers its own version)
    report = {ref: err for ref, err in Registry(registry).verify_all().items() if ref.startswith("crash@")}
    assert report and all(err is None for err in report.values()), report
    assert (
        httpx.post(
            server.url + "/v1/chat/completions",
            timeout=60,
            json={"model": "crash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ).status_code
        == 200
    )


# -- a second server on the PEFT engine: keys, overload, drain (fast to start, killed by the tests) --


@pytest.fixture
def peft_server(adapters, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    port = free_port()
    env = {**os.environ, "LORA_PLATFORM_MAX_QUEUE": "2", "LORA_PLATFORM_DRAIN_TIMEOUT_S": "20"}
    log = (tmp_path / "peft.log").open("wb")
    proc = subprocess.Popen(
        serve_cmd(
            registry,
            port,
            "--engine",
            "peft",
            "--api-key",
            "inference-key-0123456789",
            "--admin-key",
            "admin-key-0123456789",
            "--dtype",
            "float32",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: is_ready(url), 120)
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def _health(url: str) -> int | None:
    """/health's status, None once the server no longer answers."""
    try:
        return httpx.get(url + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


INF = {"Authorization": "Bearer inference-key-0123456789"}
ADM = {"Authorization": "Bearer admin-key-0123456789"}
HI = {"model": "support@1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_api_and_admin_keys(peft_server) -> None:  # type: ignore[no-untyped-def]
    url, _ = peft_server
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url + "/v1/chat/completions", json=HI, headers=INF).status_code == 200
    assert httpx.get(url + "/admin/adapters", headers=INF).status_code == 403
    r = httpx.post(url + "/admin/adapters/load", json={"model": "contact@1", "pin": True}, headers=ADM)
    assert r.status_code == 200 and r.json()["pinned"]
    assert any(
        a["model"] == "contact@1" and a["pinned"]
        for a in httpx.get(url + "/admin/adapters", headers=ADM).json()["loaded"]
    )
    for path in ("/tmp/x", "../../etc", "hf://org/repo"):
        assert httpx.post(url + "/admin/adapters/load", json={"model": path}, headers=ADM).status_code == 404
    assert httpx.post(url + "/admin/adapters/unload", json={"model": "contact@1"}, headers=ADM).json()[
        "unloaded"
    ]
    assert not httpx.post(url + "/admin/adapters/unload", json={"model": "contact@1"}, headers=ADM).json()[
        "unloaded"
    ]


def test_overload_gets_a_fast_429_with_retry_after(peft_server) -> None:  # type: ignore[no-untyped-def]
    url, _ = peft_server
    slow = {**HI, "max_tokens": 300, "temperature": 1.0}

    def call(_: int) -> tuple[int, float, str | None]:
        t = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=slow, headers=INF, timeout=120)
        return r.status_code, time.monotonic() - t, r.headers.get("retry-after")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    refused = [r for r in results if r[0] == 429]
    print(
        f"\noverload: {len(refused)}/8 refused with 429, slowest refusal {max(r[1] for r in refused) * 1000:.0f} ms"
    )
    assert refused and all(r[2] == "1" and r[1] < 1.0 for r in refused)
    assert sum(r[0] == 200 for r in results) >= 2


def test_sigterm_drains_running_requests_refuses_new_ones_and_exits_0(peft_server) -> None:  # type: ignore[no-untyped-def]
    url, proc = peft_server
    slow = {**HI, "max_tokens": 300, "temperature": 1.0}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(
            lambda: httpx.post(url + "/v1/chat/completions", json=slow, headers=INF, timeout=120)
        )
        wait_until(
            lambda: metric(url, "lora_requests_in_flight", INF) >= 1, 30
        )  # the slow request is running
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not is_ready(url), 10)  # draining: /ready turns 503
        refused = httpx.post(url + "/v1/chat/completions", json=HI, headers=INF, timeout=30)
        assert refused.status_code == 503 and refused.headers.get("retry-after") == "1"
        assert running.result().status_code == 200
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_a_dead_engine_turns_health_503_and_the_process_exits_non_zero(adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import psutil

    registry, _ = adapters
    port = free_port()
    # the watcher stops the server at its next tick after the engine dies: 2 s apart, so that
    # /health can be seen answering 503 before the server goes away
    env = {**os.environ, "LORA_PLATFORM_REFRESH_INTERVAL_S": "2"}
    proc = subprocess.Popen(
        serve_cmd(registry, port),
        stdout=(tmp_path / "log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: is_ready(url), 240)
        assert _health(url) == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "vLLM runs its engine core in a child process"
        for child in children:
            child.kill()
        killed = time.monotonic()
        wait_until(lambda: _health(url) == 503, 30)
        assert proc.wait(timeout=60) == 3
        print(f"\ndead engine: process exited 3 after {time.monotonic() - killed:.1f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
