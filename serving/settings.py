"""Server settings: flags, `LORA_PLATFORM_*` environment variables, or a YAML config file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """Everything `platform serve` can be told. Flags > config file > environment > defaults."""

    model_config = SettingsConfigDict(env_prefix="LORA_PLATFORM_", extra="forbid")

    base_model: str = "embedded/smollm2-135m-instruct-q4_1"
    """Base model: embedded id, local folder or Hub id. Loaded once."""
    registry: str | None = None
    """Registry: a folder (default ~/.cache/lora-platform/registry) or a PostgreSQL URL."""
    artifacts: str | None = None
    """Artifact store of a PostgreSQL registry: a shared folder or an fsspec URL (s3://...)."""
    host: str = "127.0.0.1"
    port: int = 8000
    engine: Literal["vllm", "peft"] = "vllm"
    """`vllm` (AsyncLLM in-process) or `peft` (transformers + peft reference engine)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Engine dtype; float32 for exact comparisons with the PEFT reference."""
    max_loras: int = Field(4, ge=1)
    """Adapters in one batch (vLLM GPU/CPU slots)."""
    max_cpu_loras: int = Field(16, ge=1)
    """Adapters kept loaded; beyond, the idle one with the fewest recent requests is evicted."""
    lora_slot_turn_s: float = Field(0.5, ge=0)
    """CPU: once an adapter has waited this long for one of the `max_loras` slots, the running
    requests of an adapter that has held its slot as long are paused for it (their KV cache is
    kept; they go on when a slot is theirs again). 0: off (it waits for a slot to drain)."""
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 64
    """Largest LoRA rank accepted (vLLM's allowed values); larger adapters are refused."""
    max_model_len: int | None = Field(None, ge=16)
    """Context length (prompt + completion); default and ceiling: the model's own."""
    max_num_seqs: int = Field(64, ge=1)
    kv_cache_gb: float = Field(1.0, gt=0)
    """CPU KV cache size in GiB (vLLM's CPU memory check needs it set)."""
    cpu_reserved_cores: int | None = Field(None, ge=0)
    """CPU only: cores kept off the model's OpenMP threads for vLLM's engine core (its
    VLLM_CPU_NUM_OF_RESERVED_CPU, which wins when exported). Default: 0 on machines with 2 usable
    CPUs or fewer (vLLM's 1 would leave the model a single thread), vLLM's own default elsewhere."""
    max_tokens_cap: int = Field(1024, ge=1)
    """Largest max_tokens a request may ask for."""
    max_n: int = Field(8, ge=1)
    max_body_bytes: int = Field(4 << 20, ge=1024)
    """Largest request body accepted, counted as it arrives, chunked or not (413 beyond)."""
    body_timeout_s: float = Field(30.0, gt=0)
    """A request body that sends nothing for this long gets 408 (slow-body slowloris)."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: how long running requests may finish before streams end with an error event."""
    max_queue: int = Field(256, ge=1)
    """Requests admitted at once; beyond it a fast 429 with Retry-After."""
    pin: list[str] = Field(default_factory=list)
    """Adapter references loaded at start and never evicted (/ready waits for them)."""
    api_key: str | None = None
    """Bearer key for inference routes (none: open). At least 16 characters: an empty or short
    key is a startup error, never "no key"."""
    admin_key: str | None = None
    """Bearer key for admin routes (none: admin routes are disabled). At least 16 characters."""
    metrics_key: str | None = None
    """Bearer key for /metrics (none: /metrics is open). At least 16 characters."""
    allow_unauthenticated: bool = False
    """Allow a non-loopback `host` without `api_key` (inference open to the network)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names the server answers to (`*.example.com` allowed); others get 400. Empty: any.
    Guards the review pages against DNS rebinding."""
    docs: bool | None = None
    """Serve /docs, /redoc and /openapi.json. Default: on without `api_key`, off with one."""
    hash_secret: str | None = None
    """Secret of the keyed hashes kept of user ids and API keys (none: one generated and kept in
    the registry folder's `server_secret`; replicas on one database should share one)."""
    refresh_interval_s: float = Field(0.2, gt=0)
    """How often the registry's change counter is polled (new versions, alias moves)."""
    tool_parser: str | None = None
    """vLLM tool-call parser for the base model's output, by vLLM's `--tool-call-parser` name
    (`hermes`, `llama3_json`, `mistral`, ...). With it, and a chat template that renders `tools`,
    chat requests may carry `tools`/`tool_choice` (vLLM engine only); without it they are a 400."""
    chat_template: str | None = None
    """A Jinja chat template file rendered instead of the base model's own (e.g. one that renders
    `tools`)."""
    served_model_name: str | None = None
    """Name of the base model in the API (default: the base model id)."""
    replicas: int | None = Field(None, ge=1)
    """Engine replicas on Ray Serve behind one router (none: one in-process server)."""
    ray_address: str | None = None
    """Ray cluster to deploy on (`auto`, `ray://host:10001`); none: a local Ray instance."""
    min_replicas: int | None = Field(None, ge=0)
    """Autoscaling lower bound (with max_replicas; Ray Serve scales on ongoing requests)."""
    max_replicas: int | None = Field(None, ge=1)
    """Autoscaling upper bound; setting it turns autoscaling on."""
    target_ongoing_requests: float = Field(8.0, gt=0)
    """Autoscaling target: ongoing requests per engine replica."""
    replica_cpus: float = Field(1.0, ge=0)
    """Ray CPUs reserved by each engine replica (the ingress reserves none)."""
    log_payloads: list[str] = Field(default_factory=list)
    """Adapter or A/B route names whose requests are logged (prompt, answer, timing). None: off."""
    payload_retention_days: float = Field(30.0, gt=0)
    """Logged payloads older than this are deleted by the server."""
    payload_redactor: str = "serving.payloads:redact"
    """`module:function` from text to text applied before a payload is stored (default: e-mail
    addresses and numbers of 4+ digits are replaced)."""
    payload_purge_interval_s: float = Field(3600.0, gt=0)
    """How often rows past retention are deleted."""
    drift_reference_s: float = Field(3 * 86400.0, gt=0)
    """Drift gauges: a version's first seconds in service, the reference window."""
    drift_window_s: float = Field(86400.0, gt=0)
    """Drift gauges: the recent window compared with the reference."""
    drift_interval_s: float = Field(60.0, gt=0)
    """How often the drift gauges are recomputed from the logged payloads."""
    ingress: Literal["process", "ray"] = "process"
    """With `replicas`: where the ingress app runs. "process": under uvicorn in the `platform serve`
    process, Ray Serve runs the engine replicas only (one Ray hop per request); "ray": an Ingress
    deployment behind Ray Serve's HTTP proxy (two hops; what a Ray Serve config deploys)."""
    spill_threshold: int = Field(4, ge=1)
    """Adapter affinity: a request goes to a replica holding its version unless that replica has
    this many more requests queued than the least loaded one (then it spills there)."""

    @field_validator("api_key", "admin_key", "metrics_key")
    @classmethod
    def _strong_key(cls, key: str | None) -> str | None:
        if key is not None:
            check_key(key)
        return key

    @property
    def docs_enabled(self) -> bool:
        return self.docs if self.docs is not None else self.api_key is None


MIN_KEY_CHARS = 16
"""Shortest bearer key accepted (an unset compose variable arrives as an empty string)."""


def check_key(key: str) -> None:
    """ValueError unless `key` is a usable bearer key: 16+ characters, no surrounding blanks."""
    if key != key.strip():
        raise ValueError("a key may not start or end with whitespace")
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(
            f"a key must have at least {MIN_KEY_CHARS} characters (got {len(key)}); generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, key: str | None, allowed: bool, key_flag: str = "--api-key") -> None:
    """StartupError (naming --host) when a non-loopback address would be served without a key."""
    if key is None and not allowed and not is_loopback(host):
        raise StartupError(
            f"{host} is reachable from other machines and no {key_flag} is set: give {key_flag} "
            "(16+ characters), or pass --allow-unauthenticated to serve it open on purpose",
            param="--host",
        )


class StartupError(Exception):
    """A mistake found before or while the server starts. `param` names the flag or file at fault
    (`platform serve` exits 2 for it); None means the arguments were fine but something failed (exit 1)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Settings from an optional YAML file, the environment, and explicit overrides (flags).

    Raises StartupError naming the flag, file field or environment variable at fault."""
    values = read_config_file(Path(config_file)) if config_file else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ServeSettings(**{**values, **flags})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        if field in flags:
            where = "--" + field.replace("_", "-")
        elif field in values:
            where = f"--config {config_file}"
        else:
            where = f"LORA_PLATFORM_{field.upper()}"
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise StartupError(problems, param=where) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; StartupError (naming the file and line) for anything else."""
    param = f"--config {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StartupError(f"cannot read it: {exc.strerror}", param=param) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise StartupError(f"invalid YAML{line}: {problem}", param=param) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StartupError(
            f"expected a mapping of settings (port: 8000, ...), got a YAML {type(data).__name__}", param=param
        )
    return {str(k): v for k, v in data.items()}
