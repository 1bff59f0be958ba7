"""Hardening (#12): odd values never give a 5xx, read-your-writes after a registry change, no slot or
lease leaked by a stream that never starts, no server path in any error, one error count per error."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.routes import start_route
from registry.store import Registry
from tests.serving.fixtures import Server, copy_versions, free_port, is_ready, serve_cmd, wait_until

MSGS = [{"role": "user", "content": "hi"}]
NAN, INF = float("nan"), float("inf")

# (endpoint, fields over a valid request, expected status, expected param)
ODD_VALUES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("chat", {"model": "support@99999999999999999999"}, 404, "model"),
    ("chat", {"model": "support@2147483648"}, 404, "model"),
    ("chat", {"model": "support@\u00b2"}, 404, "model"),  # superscript two: isdigit() but not int()
    ("chat", {"model": "support@\u0663"}, 404, "model"),  # Arabic-Indic three: not an ASCII version
    ("chat", {"model": "support\u0000"}, 404, "model"),
    ("chat", {"model": "\ud800"}, 400, "model"),  # a lone surrogate: not valid text
    ("chat", {"model": "s" * 100_000}, 400, "model"),
    ("chat", {"seed": 2**64}, 400, "seed"),
    ("chat", {"seed": -(2**64)}, 400, "seed"),
    ("chat", {"max_tokens": 10**30}, 400, "max_tokens"),
    ("chat", {"max_completion_tokens": 10**30}, 400, "max_completion_tokens"),
    ("chat", {"n": 10**30}, 400, "n"),
    ("chat", {"logprobs": True, "top_logprobs": 10**30}, 400, "top_logprobs"),
    ("chat", {"temperature": NAN}, 400, "temperature"),
    ("chat", {"top_p": NAN}, 400, "top_p"),
    ("chat", {"presence_penalty": INF}, 400, "presence_penalty"),
    ("chat", {"frequency_penalty": -INF}, 400, "frequency_penalty"),
    ("chat", {"stop": [""]}, 400, "stop"),
    ("chat", {"stop": "x" * 100_000}, 400, "stop"),
    ("chat", {"user": "u" * 100_000}, 400, "user"),
    ("chat", {"messages": [{"role": "user", "content": "\ud800"}]}, 400, "messages"),
    ("completions", {"prompt": [10**30]}, 400, "prompt"),
    ("completions", {"prompt": [-1]}, 400, "prompt"),
    ("completions", {"prompt": "\ud800"}, 400, "prompt"),
    ("completions", {"prompt": ["\ud800"]}, 400, "prompt"),
    ("completions", {"logprobs": 10**30}, 400, "logprobs"),
    ("completions", {"echo": True}, 400, "echo"),
    ("feedback", {"score": NAN}, 400, "score"),
    ("feedback", {"id": "c" * 100_000, "score": 1}, 400, "id"),
]

VALID = {
    "chat": {"model": "support@1", "messages": MSGS, "max_tokens": 2},
    "completions": {"model": "support@1", "prompt": "hi", "max_tokens": 2},
    "feedback": {"id": "chatcmpl-unknown", "score": 1},
}


def post(url: str, endpoint: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    """POST `body` as JSON as Python writes it: NaN, Infinity and lone surrogates included."""
    path = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "feedback": "/v1/feedback"}
    return httpx.post(
        url + path[endpoint],
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


@pytest.mark.parametrize(("endpoint", "fields", "status", "param"), ODD_VALUES, ids=repr)
def test_odd_values_get_a_4xx_naming_the_field_never_a_5xx(
    server: Server, endpoint: str, fields: dict[str, Any], status: int, param: str | None
) -> None:
    for stream in (False, True) if endpoint != "feedback" else (False,):
        body = {**VALID[endpoint], **fields, **({"stream": True} if stream else {})}
        r = post(server.url, endpoint, body)
        assert r.status_code == status, (stream, r.text[:300])
        error = r.json()["error"]
        assert error["param"] == param and set(error) == {"message", "type", "param", "code"}
        assert len(r.content) < 2000  # the message does not echo a huge value back
    assert post(server.url, "chat", VALID["chat"]).status_code == 200


def test_error_bodies_never_name_server_paths(server: Server, adapters) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    broken = reg.push("nomanifest", src.path, src.lineage)
    (broken.path / "manifest.json").unlink()  # the integrity check names the folder it looked in
    paths = {str(registry), str(registry.resolve()), str(registry.parent), str(Path.home())}
    for model in ("nope", "nope@1", "support@99", "support:nope", broken.ref, "../../etc/passwd"):
        for stream in (False, True):
            r = post(server.url, "chat", {**VALID["chat"], "model": model, "stream": stream})
            assert 400 <= r.status_code < 500, r.text
            assert not [p for p in paths if p in r.text], r.text


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_failed_non_streaming_request_is_counted_once(server: Server) -> None:
    before = _metric(server.url, "lora_errors_total")
    body = json.dumps({**VALID["chat"], "max_tokens": 480, "temperature": 1.0}).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: _metric(server.url, "lora_engine_requests") >= 1, 10)
    # the client left: the server ends the request with 499 client_closed_request
    wait_until(
        lambda: (
            _metric(server.url, "lora_errors_total") > before
            and _metric(server.url, "lora_requests_in_flight") == 0
        ),
        10,
    )
    assert post(server.url, "chat", VALID["chat"]).status_code == 200  # the failed one is fully done
    assert _metric(server.url, "lora_errors_total") == before + 1


# -- a server that polls the registry once an hour: only read-your-writes explains a fresh route --


@pytest.fixture(params=["sqlite", "postgresql"])
def slow_poll_server(
    request: pytest.FixtureRequest, adapters, tmp_path: Path
) -> Iterator[tuple[str, Registry]]:  # type: ignore[no-untyped-def]
    """A server that polls the catalog once an hour, on each backend: what it serves at once, it
    found by re-reading the catalog on a miss."""
    flags = ["--engine", "peft", "--dtype", "float32"]
    if request.param == "sqlite":
        location: str = str(tmp_path / "registry")
        shutil.copytree(adapters[0], location)
        reg = Registry(location)
    else:
        location, artifacts = request.getfixturevalue("postgres").new_database(), tmp_path / "artifacts"
        reg = Registry(location, artifacts)
        copy_versions(Registry(adapters[0]), reg, ["support@1", "contact@1"])
        flags += ["--artifacts", str(artifacts)]
    port = free_port()
    env = {**os.environ, "LORA_PLATFORM_REFRESH_INTERVAL_S": "3600"}
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            serve_cmd(location, port, *flags), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or is_ready(url), 180)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        yield url, reg
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_route_or_version_created_a_moment_ago_is_served_at_once(slow_poll_server) -> None:  # type: ignore[no-untyped-def]
    url, reg = slow_poll_server
    assert post(url, "chat", {**VALID["chat"], "model": "ticket"}).status_code == 404
    start_route(reg, "ticket", [("support@1", 1.0)])
    r = post(url, "chat", {**VALID["chat"], "model": "ticket"})
    assert r.status_code == 200 and r.headers["x-adapter-version"] == "support@1", r.text
    src = reg.get("contact@1")
    fresh = reg.push("fresh", src.path, src.lineage)
    r = post(url, "chat", {**VALID["chat"], "model": "fresh:latest"})
    assert r.status_code == 200 and r.headers["x-adapter-version"] == fresh.ref, r.text


# -- in-process: a stream whose client is gone before the response starts (ASGI level) --


class Gone(ConnectionResetError):
    """What a server's `send` raises once the client has closed the connection."""


def test_a_stream_whose_client_left_before_the_first_byte_gives_back_its_slot_and_lease(
    adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from serving.app import create_app
    from serving.settings import ServeSettings

    registry = tmp_path / "registry"
    shutil.copytree(adapters[0], registry)
    settings = ServeSettings(
        base_model="tiny", engine="peft", dtype="float32", registry=str(registry), max_queue=2
    )
    app = create_app(settings)
    body = json.dumps({**VALID["chat"], "stream": True}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise Gone("the client closed the connection")

    async def go() -> None:
        async with app.router.lifespan_context(app):
            state = app.state.server
            for _ in range(settings.max_queue + 2):
                with pytest.raises(Exception):  # noqa: B017 - whatever the send error becomes
                    await app(dict(scope), receive, send)
            assert state.admitted == 0
            loaded = state.adapters.describe()  # the pinned version, and any loaded ahead
            assert loaded and all(a["in_use"] == 0 for a in loaded)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await client.post("/v1/chat/completions", json=VALID["chat"])
            assert r.status_code == 200, r.text

    asyncio.run(go())
