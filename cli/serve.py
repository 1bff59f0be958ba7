"""`platform serve`: the OpenAI-compatible multi-LoRA server."""

from __future__ import annotations

import click

from cli.errors import handle_errors


@click.command("serve")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, exists=True), help="YAML settings file."
)
@click.option("--base-model", help="Base model (default: the embedded SmolLM2-135M-Instruct).")
@click.option(
    "--registry",
    envvar="LORA_PLATFORM_REGISTRY",
    help="Registry: a folder or postgresql://user:pw@host:port/db.",
)
@click.option(
    "--artifacts",
    envvar="LORA_PLATFORM_ARTIFACTS",
    help="Artifact store of a PostgreSQL registry: a shared folder or an fsspec URL.",
)
@click.option("--host", help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--engine", type=click.Choice(["vllm", "peft"]), help="Inference engine (default vllm).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]))
@click.option("--max-loras", type=int, help="Adapters per batch.")
@click.option(
    "--max-cpu-loras",
    type=int,
    help="Adapters kept loaded (beyond: the fewest recently requested is evicted).",
)
@click.option(
    "--lora-slot-turn",
    "lora_slot_turn_s",
    type=click.FloatRange(min=0),
    help="CPU: seconds an adapter waits for a batch slot before a running one is paused for it "
    "(default 0.5; 0: off).",
)
@click.option("--max-lora-rank", type=int)
@click.option("--max-model-len", type=int)
@click.option("--kv-cache-gb", type=float)
@click.option("--pin", multiple=True, help="Adapter reference to load at start and keep loaded (repeatable).")
@click.option(
    "--api-key", envvar="LORA_PLATFORM_API_KEY", help="Bearer key for inference routes (16+ characters)."
)
@click.option(
    "--admin-key", envvar="LORA_PLATFORM_ADMIN_KEY", help="Bearer key for admin routes (16+ characters)."
)
@click.option(
    "--metrics-key", envvar="LORA_PLATFORM_METRICS_KEY", help="Bearer key for /metrics (default: open)."
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    default=None,
    help="Serve a non-loopback --host without --api-key (inference open to the network).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Host name the server answers to (repeatable; *.example.com allowed); others get 400.",
)
@click.option(
    "--docs/--no-docs",
    default=None,
    help="Serve /docs, /redoc and /openapi.json (default: only without --api-key).",
)
@click.option(
    "--hash-secret",
    envvar="LORA_PLATFORM_HASH_SECRET",
    help="Secret of the keyed hashes kept of user ids and API keys (default: generated once and kept in "
    "the registry folder's server_secret); give replicas on one database the same one.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    help="Engine replicas on Ray Serve behind one endpoint (needs the `ray` extra).",
)
@click.option(
    "--ray-address",
    envvar="LORA_PLATFORM_RAY_ADDRESS",
    help="Ray cluster (auto, ray://host:10001); default: local.",
)
@click.option(
    "--ingress",
    type=click.Choice(["process", "ray"]),
    help="With --replicas: the HTTP endpoint in this process (default; one Ray hop per request) "
    "or an Ingress deployment behind Ray Serve's proxy (two hops).",
)
@click.option(
    "--min-replicas", type=click.IntRange(min=0), help="Autoscaling lower bound (with --max-replicas)."
)
@click.option(
    "--max-replicas", type=click.IntRange(min=1), help="Autoscaling upper bound: turns autoscaling on."
)
@click.option(
    "--tool-parser",
    help="vLLM tool-call parser for the base model (vLLM's --tool-call-parser names: hermes, "
    "llama3_json, mistral, ...): enables tools/tool_choice where the chat template renders tools.",
)
@click.option(
    "--chat-template",
    type=click.Path(dir_okay=False, exists=True),
    help="Jinja chat template file used instead of the base model's own.",
)
@click.option("--target-ongoing-requests", type=float, help="Autoscaling target per replica (default 8).")
@click.option(
    "--log-payloads",
    multiple=True,
    help="Log the requests of these adapter or A/B route names (repeatable or comma-separated); off by default.",
)
@click.option(
    "--payload-retention-days", type=float, help="Delete logged payloads older than this (default 30)."
)
@click.option(
    "--payload-redactor",
    help="module:function applied to logged text (default: e-mails and numbers redacted).",
)
@click.option(
    "--spill-threshold",
    type=click.IntRange(min=1),
    help="Queued requests more than the least loaded replica before a version spills (default 4).",
)
@handle_errors
def serve_cmd(
    config_file: str | None,
    pin: tuple[str, ...],
    log_payloads: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    **flags: object,
) -> None:
    """Serve the base model and every registry adapter behind an OpenAI-compatible API.

    A request's `model` picks the base model or an adapter: name, name@3 or name:alias.
    """
    from serving.server import serve
    from serving.settings import StartupError, check_exposure, load_settings

    try:
        names = [n.strip() for item in log_payloads for n in item.split(",") if n.strip()]
        settings = load_settings(
            config_file,
            pin=list(pin) or None,
            log_payloads=names or None,
            allowed_hosts=list(allowed_hosts) or None,
            **flags,
        )
        if settings.replicas is None and (
            settings.ray_address or settings.max_replicas or flags.get("ingress")
        ):
            raise click.UsageError("--ray-address, --ingress and --max-replicas need --replicas N")
        check_exposure(settings.host, settings.api_key, settings.allow_unauthenticated)
        serve(settings)
    except StartupError as exc:  # a flag or file at fault: exit 2; else exit 1
        if exc.param is None:
            raise click.ClickException(exc.message) from None
        raise click.BadParameter(exc.message, param_hint=exc.param) from None
