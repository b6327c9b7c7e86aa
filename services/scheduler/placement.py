"""Pure scheduling decisions over an inventory: no I/O, no clocks, easy to test."""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.inventory import Instance, Inventory, LoadKey, Runner, State

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


def estimate_memory(model_size: int, num_ctx: int, num_parallel: int, kv_bytes_per_token: int) -> int:
    """Weights + KV cache for every sequence + a compute-buffer allowance.

    kv_bytes_per_token is 0 when the model's geometry is unknown; then a
    conservative 1 % of the weights per 1k tokens stands in for it.
    """
    tokens = num_ctx * num_parallel
    per_token = kv_bytes_per_token or max(1, model_size // 100_000)
    compute = max(64 * 1024 * 1024, model_size // 10)
    return model_size + tokens * per_token + compute


def max_loaded(configured: int, gpu_count: int) -> int:
    return configured if configured > 0 else 3 * max(gpu_count, 1)


@dataclass(frozen=True)
class Place:
    runner_id: str


@dataclass(frozen=True)
class Evict:
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    reason: str


Decision = Place | Evict | Wait


def allocated(inv: Inventory, runner_id: str) -> int:
    return sum(i.memory for i in inv.on_runner(runner_id))


def available(inv: Inventory, runner: Runner) -> int:
    """Free memory on a runner's device: the lower of what it reports and what our ledger leaves."""
    ledger_free = runner.device.total_memory - allocated(inv, runner.id) - DEVICE_RESERVE
    if not inv.on_runner(runner.id):
        return min(runner.device.free_memory, ledger_free)
    return min(runner.device.free_memory + allocated(inv, runner.id), ledger_free)


def _eviction_set(candidates: list[Instance], need: int) -> tuple[str, ...]:
    """The smallest set of idle instances freeing `need` bytes; least recently used first on ties."""
    chosen: list[Instance] = []
    freed = 0
    # Prefer one instance that alone frees enough (smallest such), else greedily the largest.
    single = sorted((c for c in candidates if c.memory >= need), key=lambda c: (c.memory, c.last_used))
    if single:
        return (single[0].id,)
    for c in sorted(candidates, key=lambda c: (-c.memory, c.last_used)):
        chosen.append(c)
        freed += c.memory
        if freed >= need:
            break
    return tuple(c.id for c in chosen)


def place(inv: Inventory, key: LoadKey, need: int, max_loaded_models: int) -> Decision:
    """Where to load a new instance, which idle instances to evict first, or wait."""
    runners = list(inv.runners.values())
    if not runners:
        return Wait("no runner registered")
    if key.num_gpu == 0:
        runners = [r for r in runners if not r.device.is_gpu] or runners
    elif key.main_gpu is not None:
        runners = [r for r in runners if r.device.is_gpu and r.device.index == key.main_gpu] or runners
    loaded = [i for i in inv.instances.values() if i.state is not State.EXPIRING]
    idle = [i for i in inv.instances.values() if i.idle]
    if len(loaded) >= max_loaded_models:
        if not idle:
            return Wait("maximum loaded models reached; waiting for one to go idle")
        lru = min(idle, key=lambda i: i.last_used)
        return Evict((lru.id,))
    # GPUs first, then the most available memory.
    ranked = sorted(runners, key=lambda r: (not r.device.is_gpu, -available(inv, r)))
    for runner in ranked:
        if available(inv, runner) >= need:
            return Place(runner.id)
    for runner in ranked:
        on_runner_idle = [i for i in idle if i.runner_id == runner.id]
        if on_runner_idle:
            short = need - available(inv, runner)
            return Evict(_eviction_set(on_runner_idle, short))
    # Nothing to evict: load anyway when the device is empty (llama.cpp will use what there is),
    # otherwise wait for busy instances to finish.
    for runner in ranked:
        if not inv.on_runner(runner.id):
            return Place(runner.id)
    return Wait("not enough memory; waiting for loaded models to go idle")
