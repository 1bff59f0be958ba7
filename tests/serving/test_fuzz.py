"""Fuzz the HTTP surface with schemathesis against the app's own OpenAPI schema: no 5xx, no crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

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
