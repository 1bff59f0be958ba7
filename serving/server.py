"""Run the app under uvicorn (the `platform serve` entry): graceful drain, exit on a dead engine.

SIGTERM/SIGINT: new requests get 503 at once; running requests get `drain_timeout_s` to finish,
after which remaining streams end with an error event; then the process exits 0. A dead engine
makes the process exit with status 3, so a supervisor (systemd, Kubernetes) restarts it.

Startup mistakes never get that far: `check_startup` resolves the base model, opens the registry,
resolves every pin and checks the port before the engine starts, and raises `StartupError` naming
the flag at fault; what still fails while the engine starts (a pinned version that does not load)
stops the server with one line too (`StartupError` without a flag), not uvicorn's traceback.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from registry.basemodels import BaseModel, resolve_base_model
from registry.errors import RegistryError, UnavailableError
from registry.store import Registry
from serving.adapters import BASE_ALIASES
from serving.app import Startup, create_app
from serving.errors import ServingError
from serving.settings import ServeSettings, StartupError

log = logging.getLogger("lora_platform.serving")
OURS = (RegistryError, ServingError, StartupError)
"""Errors whose message says it all: reported in one line, without a traceback."""
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


def check_startup(settings: ServeSettings) -> Startup:
    """Everything that can be checked before the engine starts (seconds, not minutes): the base
    model, the registry, every pin and the port. StartupError names the flag at fault."""
    base = _base_model(settings.base_model)
    _check_tool_settings(settings)
    if settings.log_payloads:  # a redaction hook that does not load stops the server before it starts
        from serving.payloads import load_redactor

        load_redactor(settings.payload_redactor)
    registry = _open_registry(settings)
    served = settings.served_model_name or base.id
    try:
        for ref in settings.pin:
            _check_pin(registry, base, served, ref)
        _check_port(settings.host, settings.port)
    except BaseException:
        registry.close()
        raise
    return Startup(base, registry)


def _check_tool_settings(settings: ServeSettings) -> None:
    """--chat-template must be a readable Jinja template; --tool-parser a parser vLLM has, on the
    vLLM engine."""
    if settings.chat_template is not None:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        try:
            ImmutableSandboxedEnvironment().parse(Path(settings.chat_template).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read it: {exc}", param="--chat-template") from None
        except TemplateSyntaxError as exc:
            raise StartupError(
                f"line {exc.lineno}: not a valid Jinja template ({exc.message})", param="--chat-template"
            ) from None
    if settings.tool_parser is None:
        return
    if settings.engine != "vllm":
        raise StartupError("tool calling needs --engine vllm (its tool parsers)", param="--tool-parser")
    if settings.replicas is not None:  # the ingress's RemoteEngine plans and parses no tool calls
        raise StartupError(
            "tool calling is not supported with --replicas yet; serve one engine", param="--tool-parser"
        )
    from serving.engine.cpu import TESTED_VLLM, vllm_tested, vllm_version
    from serving.engine.vllm_tools import parser_names

    if not vllm_tested():  # the parsers are reached through vLLM internals (serving/engine/vllm_tools.py)
        raise StartupError(
            f"tool calling was tested with vLLM {TESTED_VLLM}, not the installed {vllm_version()}",
            param="--tool-parser",
        )
    known = parser_names()
    if settings.tool_parser not in known:
        raise StartupError(
            f"unknown tool parser {settings.tool_parser!r}; vLLM has: {', '.join(known)}",
            param="--tool-parser",
        )


def _base_model(name: str) -> BaseModel:
    path = Path(name).expanduser()
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path and not path.is_dir():
        raise StartupError(
            f"no such folder: {name!r}; give a model folder, a Hub id or an embedded model",
            param="--base-model",
        )
    try:
        return resolve_base_model(name)
    except RegistryError as exc:
        raise StartupError(str(exc), param="--base-model") from None


def _open_registry(settings: ServeSettings) -> Registry:
    try:
        return Registry(settings.registry, settings.artifacts)
    except UnavailableError as exc:  # the URL was fine; the database is not there (yet)
        raise StartupError(f"--registry: {exc}") from None
    except RegistryError as exc:
        raise StartupError(str(exc), param="--registry") from None


def _check_pin(registry: Registry, base: BaseModel, served: str, ref: str) -> None:
    param = f"--pin {ref}"
    if ref == served or ref in BASE_ALIASES:
        raise StartupError("that is the base model; only adapters can be pinned", param=param)
    try:
        version = registry.get(ref, verify_files=False)
    except UnavailableError as exc:
        raise StartupError(f"{param}: {exc}") from None
    except RegistryError as exc:
        raise StartupError(
            f"{exc}; `platform registry list` shows the adapters and versions", param=param
        ) from None
    if version.base_sha256 != base.weights_sha256:
        raise StartupError(
            f"{version.ref} was trained on {version.base_model} (weights sha256 {version.base_sha256[:12]}...), "
            f"but this server runs {base.id} (sha256 {base.short_sha}...); pin an adapter of this base model",
            param=param,
        )


def _check_port(host: str, port: int) -> None:
    """Fail now, not after the engine has started, when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(f"cannot resolve {host!r}: {exc}", param="--host") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another port", param="--port"
            ) from None


class _QuietStartupFailure(logging.Filter):
    """Drops uvicorn's traceback of a startup failure that `serve` reports itself in one line."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(getattr(self.app.state, "startup_error", None), OURS)


def serve(settings: ServeSettings) -> None:
    """Check the startup, then serve until a signal (return) or a dead engine (exit 3); with
    `replicas`, N engine replicas behind one router on Ray Serve."""
    startup = check_startup(settings)
    if settings.replicas is not None:
        startup.registry.close()
        _serve_replicas(settings)
        return
    _run(settings, create_app(settings, startup))


def _serve_replicas(settings: ServeSettings) -> None:
    from serving.cluster.ingress import engine_replicas, ingress_app, run

    if settings.ingress == "ray":
        run(settings)
        return
    with engine_replicas(settings) as (settings, handle):
        _run(settings, ingress_app(settings, handle))


def _run(settings: ServeSettings, app: Any) -> None:
    """`app` under uvicorn on host:port until a signal (drained) or a dead engine (exit 3)."""
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = DrainingServer(config, settings.drain_timeout_s)
    app.state.uvicorn_server = server
    quiet = _QuietStartupFailure(app)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when the lifespan fails, 1 when it cannot bind
        error = getattr(app.state, "startup_error", None)
        if error is None:
            raise
        if isinstance(error, OURS):
            raise StartupError(f"the server did not start: {error}") from None
        raise StartupError(
            f"the server did not start: {type(error).__name__}: {error} (see the log above)"
        ) from None
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
    state = getattr(app.state, "server", None)
    if state is not None and state.engine_dead:
        log.error("the inference engine died; exiting with status %d", EXIT_ENGINE_DEAD)
        sys.exit(EXIT_ENGINE_DEAD)
