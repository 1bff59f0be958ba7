"""Slot eviction that never evicts an adapter the step itself uses (part of the vLLM plugin).

vLLM keeps `max_loras` adapters in slots (stacked weights every LoRA layer reads) and evicts the
least recently used one to activate another. Its worker activates a step's adapters one by one
(LRUCacheWorkerLoRAManager._apply_adapters) and touches an adapter already in a slot only when its
turn comes, so an adapter new to the slots can evict one the same step uses further down the
list, which then evicts the next, and so on around the slots. This happens whenever the slot
holding the least recently used adapter is one the step still needs: after `add_lora` (our server's
load of a version from the registry activates it at once, vLLM's add_adapter) or when a finished
request's adapter is not the oldest. Each activation cost vLLM's set_lora copies into every LoRA
layer and a re-pack of the slot for the compiled op, on the engine loop. Two changes, measured on
the 64-adapter scenario of loadtests/bench.py (power-law popularity, 8 slots, 16 in CPU memory):
vLLM made 2029 activations per 1000 requests where steps needed 594 (every load from the
registry set off a chain of them); with both, 421, all needed:
- a step touches its adapters that are in a slot first, so the oldest slots are ones it does not
  use: one activation per adapter new to the slots, as LRU intends;
- `add_lora` puts the adapter in vLLM's CPU cache only (read from disk, LRU there as before); it
  takes a slot when a step asks for it, instead of evicting one a running request may be using.
And vLLM's copy of an adapter into a LoRA linear layer's stacked weights (set_lora) asks the CPU
punica wrapper first: a layer on the compiled op points the slot at the adapter's packed blocks
instead (packed once from the adapter's own weights, cpu_lora.CompiledLoRA.take), and the copy is
made only if the torch path ever runs for that layer.
Reading an adapter from disk (vLLM's LoRAModel.from_local_checkpoint, on the engine loop) parses
each tensor name three times through the model's name mapper; the names are the same for every
adapter of a model, so the parse is memoized (`memo_lora_names`): in the 64-adapter scenario it
took 2% of the model worker's time (py-spy), 0.2% memoized; a load alone 10.5 -> 9.2 ms.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


def keep_step_adapters(slots: Any, requests: Any) -> None:
    """Mark the adapters of `requests` already in a slot as just used (`slots`: vLLM's LRU of
    active adapters), so the evictions that follow take slots the step does not need."""
    for request in requests:
        if request and request.lora_int_id in slots:
            slots.touch(request.lora_int_id)


def load_into_cpu_cache(worker: Any, request: Any) -> bool:
    """vLLM's LRUCacheWorkerLoRAManager.add_adapter without its activation: the adapter is read
    from disk into the CPU cache (its least recently used adapter leaves when full), no slot."""
    from vllm.utils.gpu_sync_debug import gpu_sync_allowed  # as vLLM's add_adapter: loads may sync

    manager = worker._adapter_manager
    if request.lora_int_id in manager.list_adapters() and not request.load_inplace:
        manager._registered_adapters.touch(request.lora_int_id)
        return True
    with gpu_sync_allowed():
        lora = worker._load_adapter(request)
        manager.remove_adapter(lora.id)
        if len(manager) + 1 > manager.capacity:
            manager.remove_oldest_adapter()
        return bool(manager.add_adapter(lora))


def defer_copies(manager: Any) -> None:
    """Route the set_lora / reset_lora of every LoRA linear layer of `manager`'s model through its
    punica wrapper (take_lora / lora_copied; once per manager). Only layers whose set_lora is one of
    vLLM's two plain copies (one slice; one per slice, merged) and that are not sharded."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.column_parallel_linear import MergedColumnParallelLinearWithLoRA

    if getattr(manager, "_lora_platform_deferred", False):
        return
    manager._lora_platform_deferred = True
    plain = (BaseLinearLayerWithLoRA.set_lora, MergedColumnParallelLinearWithLoRA.set_lora)
    for module in manager.modules.values():
        if getattr(type(module), "set_lora", None) in plain and getattr(module, "tp_size", 1) == 1:
            _defer(module)


def _defer(module: Any) -> None:
    set_lora, reset_lora = module.set_lora, module.reset_lora  # vLLM's, bound

    def deferred_set_lora(index: int, lora_a: Any, lora_b: Any) -> None:
        take = getattr(getattr(module, "punica_wrapper", None), "take_lora", None)
        copy = functools.partial(set_lora, index, lora_a, lora_b)
        if take is None or not take(module.lora_a_stacked, index, lora_a, lora_b, copy):
            copy()

    def noted_reset_lora(index: int) -> None:  # vLLM's set_lora starts with it, too
        copied = getattr(getattr(module, "punica_wrapper", None), "lora_copied", None)
        if copied is not None:
            copied(module.lora_a_stacked, index)
        reset_lora(index)

    module.set_lora = deferred_set_lora
    module.reset_lora = noted_reset_lora


NAMES_MAX = 65536
"""Parsed tensor names kept (a 7-module adapter of a 30-layer model has 420)."""


class NameMemo:
    """vLLM's parse_fine_tuned_lora_name, memoized per (name, mapper content). A mapper with
    renaming rules (objects whose repr may not say all they do) is passed through unmemoized."""

    def __init__(self, parse: Any) -> None:
        self.parse = parse
        self.parsed: dict[tuple[str, str], tuple[str, bool]] = {}
        self.mappers: dict[int, tuple[Any, str]] = {}
        """id -> (mapper, its content key): vLLM makes a mapper per load, kept here while in use"""

    def content(self, mapper: Any) -> str | None:
        seen = self.mappers.get(id(mapper))
        if seen is not None and seen[0] is mapper:
            return seen[1]
        if getattr(mapper, "orig_to_new_renaming", None) or not dataclasses.is_dataclass(mapper):
            return None
        key = repr(mapper)  # the dataclass's fields: dicts of strings, patterns and tuples
        if len(self.mappers) >= 8:
            self.mappers.pop(next(iter(self.mappers)))
        self.mappers[id(mapper)] = (mapper, key)
        return key

    def __call__(self, name: str, weights_mapper: Any = None) -> tuple[str, bool]:
        mapper = "" if weights_mapper is None else self.content(weights_mapper)
        if mapper is None:
            return self.parse(name, weights_mapper)  # type: ignore[no-any-return]
        key = (name, mapper)
        hit = self.parsed.get(key)
        if hit is None:
            hit = self.parse(name, weights_mapper)
            if len(self.parsed) >= NAMES_MAX:
                self.parsed.clear()
            self.parsed[key] = hit
        return hit


def memo_lora_names() -> None:
    """Memoize the tensor-name parse of vLLM's LoRA loader (once per process)."""
    from vllm.lora import lora_model

    parse = getattr(lora_model, "parse_fine_tuned_lora_name", None)
    if parse is not None and not isinstance(parse, NameMemo):
        lora_model.parse_fine_tuned_lora_name = NameMemo(parse)  # type: ignore[attr-defined]


def install() -> None:
    """Patch vLLM's LRU worker manager, its model manager's activation, the model runner's
    add_lora and the LoRA loader's name parse (once per process)."""
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    memo_lora_names()
    if getattr(LRUCacheWorkerLoRAManager, "_lora_platform_slots", False):
        return
    apply_adapters = LRUCacheWorkerLoRAManager._apply_adapters
    add_lora = LoRAModelRunnerMixin.add_lora
    activate_adapter = LoRAModelManager.activate_adapter

    def _apply_adapters(self: Any, lora_requests: set[Any]) -> None:
        slots = getattr(self._adapter_manager, "_active_adapters", None)
        if slots is not None:
            keep_step_adapters(slots, lora_requests)
        apply_adapters(self, lora_requests)

    def _add_lora(self: Any, lora_request: Any) -> bool:
        if not isinstance(getattr(self, "lora_manager", None), LRUCacheWorkerLoRAManager):
            return bool(add_lora(self, lora_request))
        return load_into_cpu_cache(self.lora_manager, lora_request)

    def _activate_adapter(self: Any, lora_id: int) -> bool:
        defer_copies(self)
        return bool(activate_adapter(self, lora_id))

    LRUCacheWorkerLoRAManager._apply_adapters = _apply_adapters  # type: ignore[method-assign]
    LoRAModelManager.activate_adapter = _activate_adapter  # type: ignore[method-assign]
    LoRAModelRunnerMixin.add_lora = _add_lora  # type: ignore[method-assign]
    LRUCacheWorkerLoRAManager._lora_platform_slots = True  # type: ignore[attr-defined]
