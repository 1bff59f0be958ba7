"""A vLLM LoRA resolver plugin: stock vLLM serves immutable versions (`name@N`) from our registry.

Installed as the `vllm.general_plugins` entry point `lora_platform_resolver`. With it,

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 LORA_PLATFORM_REGISTRY=... vllm serve BASE --enable-lora

answers `model="support@3"` with that version: the registry (a folder or a database URL, either
backend) hands out the version's files after checking every sha256 against its manifest, and the
adapter is validated against the running base model (same base weights sha256, every adapted
module present with the right shapes) before vLLM sees it.

Facts of vLLM this is built around (vllm/lora/resolver.py, vllm/entrypoints/openai/models/serving.py):
- vLLM keeps a resolved name forever (`OpenAIServingModels.lora_requests`), so only names that
  always mean the same weights may be resolved: `name@N`. An alias (`name:prod`) or a bare name
  (latest) would stay pinned to whatever it meant at the first request; they need `platform serve`
  (or `/v1/load_lora_adapter` with `load_inplace`).
- A resolver that raises turns the request into a 500 and skips the other resolvers, so every
  failure here is one log line and `None` (vLLM then answers 404 if no other resolver knows it).
- `base_model_name` is the engine's `--model`: a local folder or a Hub id (already downloaded).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.store import Registry

RESOLVER_NAME = "lora_platform"
"""The name the resolver is registered under in vLLM's `LoRAResolverRegistry`."""
log = logging.getLogger("vllm.lora_platform")  # under vLLM's logger: printed with its own lines


class Refused(Exception):
    """A name this resolver will not hand to vLLM; the message is the log line."""


class BaseWeights:
    """The running base model's identity and tensor shapes, computed once per model name."""

    def __init__(self, base_model_name: str) -> None:
        from registry.adapter import weight_shapes

        folder = _base_folder(base_model_name)
        self.sha256 = _base_sha256(folder)
        self.shapes = weight_shapes(folder)


def _base_folder(base_model_name: str) -> Path:
    path = Path(base_model_name).expanduser()
    if path.is_dir():
        return path
    try:  # a Hub id: vLLM downloaded it before any request; never download here
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base_model_name, local_files_only=True))
    except Exception as exc:  # the Hub client raises many types; all mean "not here"
        raise Refused(
            f"the base model {base_model_name!r} has no local folder to verify adapters against"
        ) from exc


def _base_sha256(folder: Path) -> str:
    """The same identity `platform serve` uses: a built folder's identity file, else the weights' sha256."""
    from registry.basemodels.identity import read_identity, weights_sha256

    identity = read_identity(folder)
    return identity["weights_sha256"] if identity is not None else weights_sha256(folder)


class RegistryResolver:
    """Resolves `name@N` from a registry to a verified, validated `LoRARequest` (else None)."""

    def __init__(self, location: str | None = None) -> None:
        self.location = location
        self._registry: Registry | None = None
        self._bases: dict[str, BaseWeights] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> Registry:
        from registry.store import Registry

        with self._lock:
            if self._registry is None:
                self._registry = Registry(self.location)
            return self._registry

    def base(self, base_model_name: str) -> BaseWeights:
        with self._lock:
            if base_model_name not in self._bases:
                self._bases[base_model_name] = BaseWeights(base_model_name)
            return self._bases[base_model_name]

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
        try:
            path = await asyncio.to_thread(self.check, base_model_name, lora_name)
        except Refused as exc:
            log.warning("lora-platform resolver: %s", exc)
            return None
        except Exception as exc:  # never raise into vLLM: a raise is a 500 and skips other resolvers
            log.warning("lora-platform resolver: %r not resolved: %s: %s", lora_name, type(exc).__name__, exc)
            return None
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        log.info("lora-platform resolver: %s -> verified registry version", lora_name)
        # vLLM gives it its own id; LoRARequest only requires a positive one
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

    def check(self, base_model_name: str, lora_name: str) -> Path | None:
        """The verified folder of version `lora_name` (`name@N`); None when the name is not ours."""
        from registry.adapter import check_adapter
        from registry.errors import IntegrityError, NotFoundError, RegistryError
        from registry.refs import parse_ref

        try:
            ref = parse_ref(lora_name)
        except RegistryError:  # a warning like the other refusals: if no resolver takes it, the client erred
            log.warning(
                "lora-platform resolver: %r is not a registry reference; left to other resolvers", lora_name
            )
            return None
        if ref.version is None:
            raise Refused(
                f"{lora_name!r} is not an immutable version: vLLM keeps a resolved name forever, so only "
                f"name@N is resolved here (aliases and latest need `platform serve`)"
            )
        try:
            version = self.registry.get(ref, verify_files=True)
        except NotFoundError as exc:
            raise Refused(f"{lora_name!r}: {exc.message}") from exc
        except IntegrityError as exc:
            raise Refused(f"{lora_name!r} failed its integrity check: {exc.message}") from exc
        base = self.base(base_model_name)
        if version.base_sha256 != base.sha256:
            raise Refused(
                f"{version.ref} was trained on {version.base_model} (weights sha256 {version.base_sha256[:12]}...), "
                f"but vLLM runs {base_model_name} (sha256 {base.sha256[:12]}...)"
            )
        try:
            check_adapter(version.path, base.shapes)
        except RegistryError as exc:
            raise Refused(f"{version.ref} does not fit the running base model: {exc.message}") from exc
        return version.path


_RESOLVER: RegistryResolver | None = None


def register() -> None:
    """The entry point: register the resolver with vLLM (once per process; vLLM consults it only
    when VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)."""
    global _RESOLVER
    if _RESOLVER is not None:
        return
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class LoraPlatformResolver(RegistryResolver, LoRAResolver):  # vLLM's ABC, only where vLLM is
        """RegistryResolver as a vLLM LoRAResolver (vLLM's log names this class)."""

    _RESOLVER = LoraPlatformResolver()
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, _RESOLVER)
