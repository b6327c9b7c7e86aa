"""Pure scheduling decisions over an inventory: no I/O, no clocks, easy to test."""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.inventory import Instance, Inventory, LoadKey, Runner, State
from services.scheduler.memory import Estimate

GIB = 1 << 30
# Ollama's default context tiers by total GPU memory.
_CTX_TIERS = ((47 * GIB, 262_144), (23 * GIB, 32_768))
_DEFAULT_CTX = 4096
# Memory kept free on a device beyond our estimates (drivers, other processes).
DEVICE_RESERVE = 512 * 1024 * 1024


def default_num_ctx(total_gpu_memory: int, configured: int, trained: int) -> int:
    """num_ctx when the request does not set one: configured, else a memory tier; capped at training."""
    ctx = configured
    if ctx <= 0:
        ctx = next((c for limit, c in _CTX_TIERS if total_gpu_memory >= limit), _DEFAULT_CTX)
    return min(ctx, trained) if trained > 0 else ctx


def max_loaded(configured: int, gpu_count: int) -> int:
    return configured if configured > 0 else 3 * max(gpu_count, 1)


@dataclass(frozen=True)
class Place:
    runner_id: str
    gpu_layers: int = -1  # blocks to offload on a GPU runner; -1 = all


@dataclass(frozen=True)
class Evict:
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    reason: str


Decision = Place | Evict | Wait


def available(inv: Inventory, runner: Runner) -> int:
    """Free memory on a runner's device for a new instance.

    The ledger (total minus what our instances hold) and the device's own report are
    reconciled: the report is raised by what we recently freed but the driver has not
    yet shown (lagging free-memory figures must not cause spurious evictions), and
    lowered by nothing of ours (memory used by other processes counts against us).
    """
    ours = sum(i.device_bytes(runner.device.is_gpu) for i in inv.on_runner(runner.id))
    ledger_free = runner.device.total_memory - ours
    reported_free = runner.device.free_memory + runner.unreported_release
    # Instances still loading are in the ledger but may not show in the report yet.
    loading = sum(i.device_bytes(runner.device.is_gpu) for i in inv.on_runner(runner.id) if i.state is State.LOADING)
    return max(0, min(ledger_free, reported_free - loading) - DEVICE_RESERVE)


def _eviction_set(candidates: list[Instance], need: int, gpu: bool) -> tuple[str, ...] | None:
    """The smallest set of idle instances that frees `need` bytes: one instance if one suffices
    (the smallest such), else the largest first; ties go to the least recently used."""
    single = sorted(
        (c for c in candidates if c.device_bytes(gpu) >= need), key=lambda c: (c.device_bytes(gpu), c.last_used)
    )
    if single:
        return (single[0].id,)
    chosen: list[str] = []
    freed = 0
    for c in sorted(candidates, key=lambda c: (-c.device_bytes(gpu), c.last_used)):
        chosen.append(c.id)
        freed += c.device_bytes(gpu)
        if freed >= need:
            return tuple(chosen)
    return None


def _candidates(inv: Inventory, key: LoadKey) -> list[Runner]:
    runners = list(inv.runners.values())
    if key.num_gpu == 0:
        runners = [r for r in runners if not r.device.is_gpu] or runners
    elif key.main_gpu is not None:
        runners = [r for r in runners if r.device.is_gpu and r.device.index == key.main_gpu] or runners
    # GPUs first, then the most available memory.
    return sorted(runners, key=lambda r: (not r.device.is_gpu, -available(inv, r)))


def place(inv: Inventory, key: LoadKey, est: Estimate, max_loaded_models: int) -> Decision:
    """Where to load a new instance, which idle instances to evict first, or wait.

    In order: a device where the whole model fits; the smallest eviction of idle,
    unpinned instances (keep_alive < 0 pins) that makes it fit; the same with pinned
    ones; a partial offload on a GPU; an empty device (llama.cpp uses what there is).
    """
    ranked = _candidates(inv, key)
    if not ranked:
        return Wait("no runner registered")
    active = [i for i in inv.instances.values() if i.state is not State.EXPIRING]
    idle = [i for i in inv.instances.values() if i.idle]
    if len(active) >= max_loaded_models:
        unpinned = [i for i in idle if not i.pinned] or idle
        if not unpinned:
            return Wait("maximum loaded models reached; waiting for one to go idle")
        return Evict((min(unpinned, key=lambda i: i.last_used).id,))
    need = est.total
    for runner in ranked:
        if available(inv, runner) >= need:
            return Place(runner.id, -1 if key.num_gpu < 0 else key.num_gpu)
    for allow_pinned in (False, True):
        for runner in ranked:
            pool = [i for i in idle if i.runner_id == runner.id and (allow_pinned or not i.pinned)]
            victims = _eviction_set(pool, need - available(inv, runner), runner.device.is_gpu)
            if victims:
                return Evict(victims)
    for runner in ranked:
        if runner.device.is_gpu:
            layers = est.layers_that_fit(available(inv, runner))
            if layers > 0:
                return Place(runner.id, layers)
    for runner in ranked:
        if not inv.on_runner(runner.id):
            return Place(runner.id, -1)
    return Wait("not enough memory; waiting for loaded models to go idle")
