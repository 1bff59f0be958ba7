"""Fuzz the HTTP surface with schemathesis against the app's own OpenAPI schema: no 5xx, no crash."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.serving.fixtures import Server


@pytest.fixture(scope="module")
def api_schema(server: Server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, server: Server) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(base_url=server.url, checks=[not_a_server_error])


def test_the_server_is_healthy_after_fuzzing(server: Server) -> None:
    assert httpx.get(server.url + "/health").status_code == 200
