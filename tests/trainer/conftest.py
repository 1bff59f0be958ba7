"""Trainer fixtures: a real MLflow tracking server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.trainer.mlflow_server import MlflowServer, server_executable


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` (SQLite backend store, artifacts in a temp folder) on 127.0.0.1."""
    exe = server_executable()
    if exe is None:
        pytest.skip("no MLflow server venv (.venv-mlflow): run `make setup`")
    server = MlflowServer(exe, tmp_path_factory.mktemp("mlflow"))
    yield server
    server.close()
