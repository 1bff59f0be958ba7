"""Run the app under uvicorn (the `platform serve` entry): graceful drain, exit on a dead engine.

SIGTERM/SIGINT: new requests get 503 at once; running requests get `drain_timeout_s` to finish,
after which remaining streams end with an error event; then the process exits 0. A dead engine
makes the process exit with status 3, so a supervisor (systemd, Kubernetes) restarts it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import uvicorn

from serving.app import create_app
from serving.settings import ServeSettings

log = logging.getLogger("lora_platform.serving")
EXIT_ENGINE_DEAD = 3


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains instead of closing connections at once."""

    def __init__(self, config: uvicorn.Config, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = getattr(getattr(self.config.app, "state", None), "server", None)
        if state is None or self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        state.draining = True
        threading.Thread(target=self._drain, args=(state,), daemon=True).start()

    def _drain(self, state: Any) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while state.admitted > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if state.admitted > 0:
            state.drain_expired = True  # running streams end with an error event
            grace = time.monotonic() + 5
            while state.admitted > 0 and time.monotonic() < grace:
                time.sleep(0.05)
        self.should_exit = True


def serve(settings: ServeSettings) -> None:
    if settings.replicas is not None:  # N engine replicas behind one router, on Ray Serve
        from serving.cluster.router import run

        run(settings)
        return
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = DrainingServer(config, settings.drain_timeout_s)
    app.state.uvicorn_server = server
    server.run()
    state = getattr(app.state, "server", None)
    if state is not None and state.engine_dead:
        log.error("the inference engine died; exiting with status %d", EXIT_ENGINE_DEAD)
        sys.exit(EXIT_ENGINE_DEAD)
