"""The scheduler's view of the world: runners, their devices, loaded instances.

Plain data only; decisions over it live in placement.py (pure functions) and
the orchestration in core.py.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field, replace

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
    """A runner and its devices: the CPU, or one or more GPUs of one host."""

    id: str
    address: str
    devices: list[Device]  # in the runner's order (the order of LoadOptions.tensor_split)
    last_seen: float = field(default_factory=time.monotonic)
    # Bytes per device we unloaded that the device's free-memory report may not show yet, and when.
    unreported_release: dict[str, int] = field(default_factory=dict)
    released_at: float = 0.0

    @property
    def gpus(self) -> list[Device]:
        return [d for d in self.devices if d.is_gpu]

    @property
    def is_gpu(self) -> bool:
        return any(d.is_gpu for d in self.devices)

    def device(self, device_id: str) -> Device:
        return next(d for d in self.devices if d.id == device_id)

    def on_report(self, devices: list[Device], now: float, settle: float) -> None:
        """Take fresh device reports; what they now show as freed leaves the unreported pool."""
        before = {d.id: d.free_memory for d in self.devices}
        for d in devices:
            rose = d.free_memory - before.get(d.id, d.free_memory)
            if rose > 0 and d.id in self.unreported_release:
                self.unreported_release[d.id] = max(0, self.unreported_release[d.id] - rose)
        if now - self.released_at > settle:
            self.unreported_release.clear()
        self.devices = devices
        self.last_seen = now

    def on_release(self, by_device: dict[str, int], now: float) -> None:
        for device_id, nbytes in by_device.items():
            self.unreported_release[device_id] = self.unreported_release.get(device_id, 0) + nbytes
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
    adapters: tuple[tuple[str, str, float], ...]  # (digest, path on the store's host, scale)
    kv_cache_type: str
    flash_attention: bool | None
    draft: tuple[str, str, int] | None = None  # the draft model: (digest, path on the store's host, size)
    draft_num_predict: int = 0  # 0 = the runner's default

    def covers(self, wanted: LoadKey) -> bool:
        """An instance loaded with this key can serve a request for `wanted`: the same in
        everything but a context at least as long (the runner then holds the request to its
        own num_ctx). Ollama reloads on any num_ctx change, which makes clients that differ
        in num_ctx (or grow it as a chat grows) reload the model on every request."""
        return self.num_ctx >= wanted.num_ctx and replace(self, num_ctx=wanted.num_ctx) == wanted


@dataclass
class Instance:
    id: str
    runner_id: str
    key: LoadKey
    spec: scheduler_pb2.ModelSpec
    memory_estimate: int  # total bytes, from memory.estimate
    estimate: dict[str, int]  # estimated bytes per device of its runner (VRAM per GPU; RAM on a CPU runner)
    keep_alive: float  # seconds; math.inf = forever
    gpu_layers: int = -1  # blocks offloaded when on a GPU runner; -1 = all
    main_gpu: int | None = None  # Device.index holding the whole model (single-GPU placement)
    tensor_split: tuple[int, ...] = ()  # blocks per GPU of the runner when spread over several
    state: State = State.LOADING
    leases: int = 0
    context_length: int = 0
    size_bytes: int = 0  # as reported by the runner after load
    size_vram_bytes: int = 0
    measured: dict[str, int] = field(default_factory=dict)  # bytes per device, reported after load
    expires_at: float = math.inf  # wall clock (time.time()); inf = forever or busy
    last_used: float = field(default_factory=time.monotonic)
    idle_since: float = 0.0  # leased but without work on the runner since (abandoned-lease check)
    # Other models (name -> manifest digest) granted leases on it: a Modelfile or a copy over
    # the same weights whose load options it covers (LoadKey.covers) shares it, as in Ollama.
    also_serves: dict[str, str] = field(default_factory=dict)

    def serves_manifest(self, manifest_digest: str) -> bool:
        return manifest_digest == self.spec.manifest_digest or manifest_digest in self.also_serves.values()

    @property
    def idle(self) -> bool:
        return self.leases == 0 and self.state is State.READY

    @property
    def memory(self) -> int:
        """Total bytes: what the runner reported after load, else the estimate."""
        return self.size_bytes or self.memory_estimate

    def device_bytes(self, device_id: str) -> int:
        """Bytes this instance holds on one device of its runner: measured once loaded, else estimated."""
        return (self.measured if self.size_bytes else self.estimate).get(device_id, 0)

    @property
    def pinned(self) -> bool:
        return math.isinf(self.keep_alive)


@dataclass
class Inventory:
    runners: dict[str, Runner] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)

    def on_runner(self, runner_id: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.runner_id == runner_id]

    def for_model(self, model_digest: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.key.model_digest == model_digest]
