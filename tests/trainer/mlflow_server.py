"""A real MLflow tracking server on 127.0.0.1 with a SQLite backend store, for the tracking tests.

The server comes from its own venv (`make setup` builds `.venv-mlflow` from
requirements/mlflow-server.txt): the full `mlflow` package pins versions the main venv has newer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.serving.fixtures import free_port

VENV = ".venv-mlflow"
READY_S = 180.0


def server_executable() -> Path | None:
    """`mlflow` of the server venv: beside this checkout, or beside the venv running the tests."""
    for root in (Path(__file__).resolve().parents[2], Path(sys.prefix).parent):
        exe = root / VENV / "bin" / "mlflow"
        if exe.is_file():
            return exe
    return None


class MlflowServer:
    """`mlflow server` started in `folder`; `uri` is its address; `close()` stops it."""

    def __init__(self, exe: Path, folder: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    str(exe),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{folder / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(folder / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        from testkit.servers import wait_ready

        try:
            wait_ready(self.uri, self.proc, READY_S, "/health")
        except RuntimeError as exc:
            raise RuntimeError(f"mlflow server: {exc}: {self.log.read_text()[-2000:]}") from exc

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
