"""The scheduler's view of the world: runners, their devices, loaded instances.

Plain data only; decisions over it live in placement.py (pure functions) and
the orchestration in core.py.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

from corral.v1 import common_pb2, scheduler_pb2


@dataclass
class Device:
    id: str
    kind: int  # common_pb2.DeviceKind
    index: int
    name: str
    total_memory: int
    free_memory: int
    host: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == common_pb2.DEVICE_KIND_CUDA

    @classmethod
    def from_proto(cls, d: common_pb2.Device) -> Device:
        return cls(d.id, d.kind, d.index, d.name, d.total_memory_bytes, d.free_memory_bytes, d.host)

    def to_proto(self) -> common_pb2.Device:
        return common_pb2.Device(
            id=self.id,
            kind=self.kind,  # type: ignore[arg-type]
            index=self.index,
            name=self.name,
            total_memory_bytes=self.total_memory,
            free_memory_bytes=self.free_memory,
            host=self.host,
        )


@dataclass
class Runner:
    id: str
    address: str
    device: Device
    last_seen: float = field(default_factory=time.monotonic)
    # Bytes we unloaded that the device's free-memory report may not show yet, and when.
    unreported_release: int = 0
    released_at: float = 0.0

    def on_report(self, device: Device, now: float, settle: float) -> None:
        """Take a fresh device report; what it now shows as freed leaves the unreported pool."""
        rose = device.free_memory - self.device.free_memory
        if rose > 0:
            self.unreported_release = max(0, self.unreported_release - rose)
        if now - self.released_at > settle:
            self.unreported_release = 0
        self.device = device
        self.last_seen = now

    def on_release(self, nbytes: int, now: float) -> None:
        self.unreported_release += nbytes
        self.released_at = now


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    EXPIRING = "expiring"  # will unload once its leases end


@dataclass(frozen=True)
class LoadKey:
    """What makes two loads the same instance: the weights and the load options."""

    model_digest: str
    num_ctx: int
    num_batch: int
    num_gpu: int
    main_gpu: int | None
    num_thread: int
    num_parallel: int
    adapters: tuple[tuple[str, float], ...]
    kv_cache_type: str
    flash_attention: bool | None


@dataclass
class Instance:
    id: str
    runner_id: str
    key: LoadKey
    spec: scheduler_pb2.ModelSpec
    memory_estimate: int  # total bytes, from memory.estimate
    gpu_estimate: int  # the part on a GPU device
    keep_alive: float  # seconds; math.inf = forever
    gpu_layers: int = -1  # blocks offloaded when on a GPU runner; -1 = all
    state: State = State.LOADING
    leases: int = 0
    context_length: int = 0
    size_bytes: int = 0  # as reported by the runner after load
    size_vram_bytes: int = 0
    expires_at: float = math.inf  # wall clock (time.time()); inf = forever or busy
    last_used: float = field(default_factory=time.monotonic)
    idle_since: float = 0.0  # leased but without work on the runner since (abandoned-lease check)

    @property
    def idle(self) -> bool:
        return self.leases == 0 and self.state is State.READY

    @property
    def memory(self) -> int:
        """Total bytes: what the runner reported after load, else the estimate."""
        return self.size_bytes or self.memory_estimate

    def device_bytes(self, gpu: bool) -> int:
        """Bytes this instance holds on its runner's device (VRAM on a GPU, RAM on the CPU)."""
        if not gpu:
            return self.memory
        return self.size_vram_bytes if self.size_bytes else self.gpu_estimate

    @property
    def pinned(self) -> bool:
        return math.isinf(self.keep_alive)


@dataclass
class Inventory:
    runners: dict[str, Runner] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)

    def on_runner(self, runner_id: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.runner_id == runner_id]

    def for_key(self, key: LoadKey) -> list[Instance]:
        return [i for i in self.instances.values() if i.key == key]

    def for_model(self, model_digest: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.key.model_digest == model_digest]
