"""Fuzz the HTTP surface with schemathesis against the app's own OpenAPI schema, then with chunked
bodies and slowloris connections over raw sockets: no 5xx, no crash."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.fixtures import Server


def test_schemathesis_finds_no_server_errors(server: Server, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "schemathesis")
    done = subprocess.run(
        [
            cli,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "60",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "/v1/chat/completions" in done.stdout and "passed" in done.stdout.lower()
    assert httpx.get(server.url + "/health").status_code == 200


# -- beyond the schema (#31): chunked bodies and slowloris against the same running server --

CHAT = b'{"model":"support@1","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'


def _raw(port: int, request: bytes, timeout: float = 60) -> bytes:
    """Send `request` as is, 64 KiB at a time, stopping once the server answers (it may refuse
    before the end); then read the response head ("" if the server hung up without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        try:
            for i in range(0, len(request), 65536):
                sock.sendall(request[i : i + 65536])
                if select.select([sock], [], [], 0)[0]:
                    break
        except OSError:
            pass
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        return data


def _chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _head(path: str, *headers: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + "".join(h + "\r\n" for h in headers)
        + "\r\n"
    ).encode()


CHUNKED_CASES: list[tuple[str, bytes]] = [
    ("one-byte chunks", _head("/v1/chat/completions", "Transfer-Encoding: chunked") + _chunked(CHAT, 1)),
    (
        "chunk extensions",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked")
        + b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT),
    ),
    (
        "trailers",
        _head("/v1/completions", "Transfer-Encoding: chunked")
        + _chunked(b'{"prompt":"x"}', 3)[:-2]
        + b"X-Trailer: 1\r\n\r\n",
    ),
    (
        "bad chunk size",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked") + b"zz\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "chunk longer than said",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked") + b"2\r\nabcdef\r\n0\r\n\r\n",
    ),
    (
        "huge chunk size",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked")
        + b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n",
    ),
    (
        "chunked and Content-Length",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked", "Content-Length: 5") + _chunked(CHAT, 16),
    ),
    (
        "gzip transfer coding",
        _head("/v1/chat/completions", "Transfer-Encoding: gzip, chunked") + _chunked(CHAT, 16),
    ),
    (
        "invalid JSON",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked") + _chunked(b'{"model": [', 4),
    ),
    ("not UTF-8", _head("/v1/feedback", "Transfer-Encoding: chunked") + _chunked(b'{"id":"\xff\xfe"}', 5)),
    (
        "5 MiB",
        _head("/v1/chat/completions", "Transfer-Encoding: chunked") + _chunked(b"[" * (5 << 20), 1 << 16),
    ),
]


@pytest.mark.parametrize(("case", "request_bytes"), CHUNKED_CASES, ids=[c for c, _ in CHUNKED_CASES])
def test_chunked_bodies_never_get_a_5xx(server: Server, case: str, request_bytes: bytes) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    head = _raw(port, request_bytes)  # "": the server hung up on a malformed request, no 5xx
    if head:
        status = int(head.split(b" ", 2)[1])
        assert status < 500, (case, head[:300])
        if case == "5 MiB":
            assert status == 413
    assert httpx.get(server.url + "/health").status_code == 200


def test_slowloris_connections_leave_the_server_answering_without_5xx(server: Server) -> None:
    """150 connections dribble headers and 50 dribble a body; meanwhile ordinary requests are
    answered, none with a 5xx. (Headers that never end are a proxy's to cut: uvicorn has no header
    timeout; the compose HAProxy's `timeout http-request` does it. Stalled bodies get 408.)"""
    port = int(server.url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if i < 150:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-")
            else:
                sock.sendall(_head("/v1/chat/completions", "Content-Length: 100000") + CHAT[:10])
            held.append(sock)
        for round_ in range(3):
            for sock in held:  # one more byte each, as a slowloris does
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")
            r = httpx.post(
                server.url + "/v1/chat/completions",
                content=CHAT,
                timeout=120,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200, (round_, r.text)
            assert httpx.get(server.url + "/health", timeout=30).status_code == 200
        for sock in held:  # nothing answered a held connection with a 5xx
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                data = sock.recv(65536)
                assert not data.startswith(b"HTTP/1.1 5"), data[:200]
    finally:
        for sock in held:
            sock.close()
    assert httpx.get(server.url + "/health").status_code == 200
