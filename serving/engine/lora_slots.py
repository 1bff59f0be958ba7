"""Slot eviction that never evicts an adapter the step itself uses (part of the vLLM plugin).

vLLM keeps `max_loras` adapters in slots (stacked weights every LoRA layer reads) and evicts the
least recently used one to activate another. Its worker activates a step's adapters one by one
(LRUCacheWorkerLoRAManager._apply_adapters) and touches an adapter already in a slot only when its
turn comes, so an adapter new to the slots can evict one the same step uses further down the
list, which then evicts the next, and so on around the slots. This happens whenever the slot
holding the least recently used adapter is one the step still needs: after `add_lora` (our server's
load of a version from the registry activates it at once, vLLM's add_adapter) or when a finished
request's adapter is not the oldest. Each activation copies the adapter into every LoRA layer
(vLLM's set_lora) and re-packs the slot for the compiled op (lora_kernel.PackedLayer.repack), on
the engine loop. Two changes, measured on the 64-adapter scenario of loadtests/bench.py (power-law
popularity, 8 slots, 16 in CPU memory) vLLM made 2029 activations per 1000 requests where steps
needed 594 (every load from the registry set off a chain of them); with both, 421, all needed:
- a step touches its adapters that are in a slot first, so the oldest slots are ones it does not
  use: one activation per adapter new to the slots, as LRU intends;
- `add_lora` puts the adapter in vLLM's CPU cache only (read from disk, LRU there as before); it
  takes a slot when a step asks for it, instead of evicting one a running request may be using.
And every activation tells the CPU punica wrapper which LoRAModel a slot now holds (`slot_filled`),
so the compiled op packs an adapter once and copies its packed blocks when it comes back
(cpu_lora.CompiledLoRA).
"""

from __future__ import annotations

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


def tell_wrappers(manager: Any, lora_id: int) -> None:
    """After vLLM's manager copied adapter `lora_id` into a slot: tell its punica wrappers which
    LoRAModel the slot now holds (the CPU wrapper keeps that adapter's packed weights with it)."""
    adapter = manager._registered_adapters.get(lora_id)
    if adapter is None:
        return
    slot = manager.lora_index_to_id.index(lora_id)
    wrappers = {id(w): w for w in getattr(manager, "punica_wrapper_mapping", {}).values()}
    for wrapper in wrappers.values():
        if hasattr(wrapper, "slot_filled"):
            wrapper.slot_filled(slot, adapter)


def install() -> None:
    """Patch vLLM's LRU worker manager, its model manager's activation and the model runner's
    add_lora (once per process)."""
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

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
        activated = bool(activate_adapter(self, lora_id))
        if activated:
            tell_wrappers(self, lora_id)
        return activated

    LRUCacheWorkerLoRAManager._apply_adapters = _apply_adapters  # type: ignore[method-assign]
    LoRAModelManager.activate_adapter = _activate_adapter  # type: ignore[method-assign]
    LoRAModelRunnerMixin.add_lora = _add_lora  # type: ignore[method-assign]
    LRUCacheWorkerLoRAManager._lora_platform_slots = True  # type: ignore[attr-defined]
