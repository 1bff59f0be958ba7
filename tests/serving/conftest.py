"""Fixtures shared by the Ray Serve test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.serving.fixtures import free_port


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[str]:
    """One local Ray (2 CPUs) and Serve's HTTP proxy on a free loopback port, per test session."""
    ray = pytest.importorskip("ray")
    from ray import serve

    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    # workers' logs stay in Ray's session folder: printed here they land in CliRunner's output
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
