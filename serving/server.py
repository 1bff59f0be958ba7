"""Run the app under uvicorn (the `platform serve` entry)."""

from __future__ import annotations

import uvicorn

from serving.app import create_app
from serving.settings import ServeSettings


def serve(settings: ServeSettings) -> None:
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=30
    )
