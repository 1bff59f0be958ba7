"""Fixtures shared by the Ray Serve test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.fixtures import free_port


@pytest.fixture(scope="session")
def ray_serve(ray_cluster: str) -> Iterator[str]:
    """Serve's HTTP proxy on a free loopback port, on the session's Ray (tests/conftest.py)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
