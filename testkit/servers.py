"""Start, wait for and stop `platform serve` (or any HTTP server) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def platform_cmd() -> str:
    """The `platform` script of this Python environment."""
    return shutil.which("platform", path=str(BIN)) or "platform"


def serve_command(base_model: str, registry: Path | str, port: int, *extra: str) -> list[str]:
    """`platform serve` on a base model, a registry and a loopback port, plus `extra` flags."""
    return [
        platform_cmd(),
        "serve",
        "--base-model",
        base_model,
        "--registry",
        str(registry),
        "--port",
        str(port),
        *extra,
    ]


def wait_until(pred: Callable[[], object], timeout: float = 1.0) -> float:
    """Seconds until `pred()` holds, polled every 50 ms; AssertionError after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


class _ThreadServer(uvicorn.Server):
    """uvicorn's server that says, through an Event, when it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextmanager
def app_in_thread(app: Any, port: int, timeout_s: float = 20) -> Iterator[str]:
    """An ASGI app served by uvicorn on 127.0.0.1:`port` in a daemon thread; yields its URL."""
    server = _ThreadServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not server.ready.wait(timeout_s):
        raise RuntimeError(f"in-thread server on port {port} not started after {timeout_s}s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float, path: str = "/v1/models"
) -> float:
    """Seconds until `url + path` answers 200; raises if `proc` exits or `timeout_s` passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server at {url} not ready after {timeout_s}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), then SIGKILL if it is still there a minute later."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@contextmanager
def server_process(
    cmd: list[str],
    url: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
    ready_path: str = "/v1/models",
) -> Iterator[float]:
    """Start a server command, wait for it, yield its start-up seconds, stop it."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        try:
            started = wait_ready(url, proc, timeout_s, ready_path)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}; {' '.join(cmd[:4])} ... log tail:\n{log.read_text()[-3000:]}"
            ) from None
        yield started
    finally:
        stop_process(proc)
