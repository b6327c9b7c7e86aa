"""Pure scheduling decisions over an inventory: no I/O, no clocks, easy to test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from services.scheduler import memory
from services.scheduler.inventory import Device, Instance, Inventory, LoadKey, Runner, State
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
    main_gpu: int | None = None  # Device.index of the one GPU that holds it
    tensor_split: tuple[int, ...] = ()  # offloaded units per GPU of the runner, when spread
    # Estimated bytes per device id (not part of the decision's identity).
    device_bytes: tuple[tuple[str, int], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Evict:
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    reason: str


Decision = Place | Evict | Wait


def available(inv: Inventory, runner: Runner, device_id: str) -> int:
    """Free memory on one of a runner's devices for a new instance.

    The ledger (total minus what our instances hold) and the device's own report are
    reconciled: the report is raised by what we recently freed but the driver has not
    yet shown (lagging free-memory figures must not cause spurious evictions), and
    lowered by nothing of ours (memory used by other processes counts against us).
    """
    device = runner.device(device_id)
    mine = inv.on_runner(runner.id)
    ledger_free = device.total_memory - sum(i.device_bytes(device_id) for i in mine)
    reported_free = device.free_memory + runner.unreported_release.get(device_id, 0)
    # Instances still loading are in the ledger but may not show in the report yet.
    loading = sum(i.device_bytes(device_id) for i in mine if i.state is State.LOADING)
    return max(0, min(ledger_free, reported_free - loading) - DEVICE_RESERVE)


@dataclass(frozen=True)
class _Target:
    """Where one instance could go: one GPU, all GPUs of a runner (a spread), or a CPU runner."""

    runner: Runner
    devices: tuple[Device, ...]

    @property
    def on_gpu(self) -> bool:
        return self.devices[0].is_gpu

    def room(self, inv: Inventory, freed: Sequence[Instance] = ()) -> list[int]:
        """Available bytes per device, plus what evicting `freed` would return."""
        return [available(inv, self.runner, d.id) + sum(i.device_bytes(d.id) for i in freed) for d in self.devices]

    def fit(self, inv: Inventory, est: Estimate, gpu_layers: int, freed: Sequence[Instance] = ()) -> Place | None:
        room = self.room(inv, freed)
        if not self.on_gpu:
            return self.whole(est, gpu_layers) if est.total <= room[0] else None
        fitted = memory.split(est, room, gpu_layers)
        return None if fitted is None else self.place(fitted)

    def whole(self, est: Estimate, gpu_layers: int = -1) -> Place:
        """Everything here, without a split of our own (a CPU runner, or llama.cpp's choice)."""
        share = est.total // len(self.devices)
        main_gpu = self.devices[0].index if self.on_gpu and len(self.devices) == 1 else None
        return Place(self.runner.id, gpu_layers, main_gpu, device_bytes=tuple((d.id, share) for d in self.devices))

    def place(self, fitted: memory.Split) -> Place:
        spread = len(self.devices) > 1
        return Place(
            self.runner.id,
            fitted.gpu_layers,
            main_gpu=None if spread else self.devices[0].index,
            tensor_split=fitted.units if spread else (),
            device_bytes=tuple((d.id, b) for d, b in zip(self.devices, fitted.device_bytes, strict=True)),
        )


def _targets(inv: Inventory, key: LoadKey, spread: bool) -> list[_Target]:
    """Single GPUs by room, then multi-GPU spreads by total room, then CPU runners.

    `spread` (CORRAL_SCHED_SPREAD) drops the single-GPU choices of multi-GPU runners."""
    runners = list(inv.runners.values())
    if key.num_gpu == 0:
        runners = [r for r in runners if not r.is_gpu] or runners
    singles, spreads, cpus = [], [], []
    for r in runners:
        gpus = r.gpus
        if key.main_gpu is not None:
            gpus = [g for g in gpus if g.index == key.main_gpu]
            if not gpus:
                continue
        if not r.is_gpu:
            cpus.append(_Target(r, tuple(r.devices[:1])))
            continue
        if len(gpus) == 1 or not spread:
            singles += [_Target(r, (g,)) for g in gpus]
        if len(gpus) > 1:
            spreads.append(_Target(r, tuple(gpus)))
    if key.main_gpu is not None and not singles:
        return _targets(inv, replace(key, main_gpu=None), spread)  # no such GPU: place anywhere

    def most_room_first(t: _Target) -> int:
        return -sum(t.room(inv))

    return sorted(singles, key=most_room_first) + sorted(spreads, key=most_room_first) + cpus


def _eviction_set(
    inv: Inventory, target: _Target, pool: list[Instance], est: Estimate, want: int
) -> tuple[str, ...] | None:
    """The smallest set of idle instances whose eviction makes the model fit the target: one instance
    if one suffices (the smallest such), else the largest first; ties go to the least recently used."""

    def size(i: Instance) -> int:
        return sum(i.device_bytes(d.id) for d in target.devices)

    def fits(freed: list[Instance]) -> bool:
        return target.fit(inv, est, want, freed) is not None

    pool = [i for i in pool if size(i) > 0]
    for c in sorted(pool, key=lambda c: (size(c), c.last_used)):
        if fits([c]):
            return (c.id,)
    chosen: list[Instance] = []
    for c in sorted(pool, key=lambda c: (-size(c), c.last_used)):
        chosen.append(c)
        if fits(chosen):
            return tuple(i.id for i in chosen)
    return None


def place(inv: Inventory, key: LoadKey, est: Estimate, max_loaded_models: int, spread: bool = False) -> Decision:
    """Where to load a new instance, which idle instances to evict first, or wait.

    In order: a GPU that holds the whole model, the GPUs of one runner together, a CPU runner;
    the smallest eviction of idle, unpinned instances (keep_alive < 0 pins) that makes it
    fit; the same with pinned ones; a partial offload with the most blocks on GPUs; an empty
    runner (llama.cpp uses what there is).
    """
    targets = _targets(inv, key, spread)
    if not targets:
        return Wait("no runner registered")
    active = [i for i in inv.instances.values() if i.state is not State.EXPIRING]
    idle = [i for i in inv.instances.values() if i.idle]
    if len(active) >= max_loaded_models:
        unpinned = [i for i in idle if not i.pinned] or idle
        if not unpinned:
            return Wait("maximum loaded models reached; waiting for one to go idle")
        return Evict((min(unpinned, key=lambda i: i.last_used).id,))
    want = key.num_gpu
    for target in targets:
        placed = target.fit(inv, est, want)
        if placed:
            return placed
    for allow_pinned in (False, True):
        for target in targets:
            pool = [i for i in idle if i.runner_id == target.runner.id and (allow_pinned or not i.pinned)]
            victims = _eviction_set(inv, target, pool, est, want)
            if victims:
                return Evict(victims)
    partial = [(s, t) for t in targets if t.on_gpu and (s := memory.most_layers(est, t.room(inv)))]
    if partial:
        fitted, target = max(partial, key=lambda p: sum(p[0].units))  # the most layers offloaded
        return target.place(fitted)
    empty = [t for t in targets if not inv.on_runner(t.runner.id)]
    if empty:  # the most devices first: llama.cpp spreads what it can
        return max(empty, key=lambda t: len(t.devices)).whole(est)
    return Wait("not enough memory; waiting for loaded models to go idle")
