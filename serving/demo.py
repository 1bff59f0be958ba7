"""Start the server in this process, ask the base model and an adapter the same questions, stop.

Used by `platform demo` (the README's main job) and handy in notebooks: it goes through the
real HTTP server and the official openai client, exactly like any user.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from serving.app import create_app
from serving.settings import ServeSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(settings: ServeSettings, start_timeout_s: float = 300) -> Iterator[str]:
    """Run uvicorn in a background thread until the block ends; yields the base URL."""
    if settings.port == 0:
        settings = settings.model_copy(update={"port": free_port()})
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="lora-platform-server", daemon=True)
    thread.start()
    url = f"http://{settings.host}:{settings.port}"
    deadline = time.monotonic() + start_timeout_s
    try:
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError("the server failed to start (see the log above)")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(f"the server was not ready after {start_timeout_s:.0f}s")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def side_by_side(
    settings: ServeSettings, adapter: str, prompts: list[str], max_tokens: int = 48
) -> list[dict[str, str]]:
    """Each prompt answered by the base model and by `adapter`, through the OpenAI API."""
    import openai

    rows = []
    with running_server(settings) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=settings.api_key or "none", max_retries=0)
        base_name = client.models.list().data[0].id
        for prompt in prompts:
            row = {"prompt": prompt}
            for label, model in (("base", base_name), ("adapter", adapter)):
                out = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                row[label] = out.choices[0].message.content or ""
                row[f"{label}_model"] = out.model
            rows.append(row)
    return rows
