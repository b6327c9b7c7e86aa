"""Which devices a runner drives and how much memory they have right now.

`probe_for("cpu" | "cuda:N" | "cuda:0,1" | "cuda")` picks a probe; tests inject
their own `DeviceProbe`. A runner drives either the CPU or one or more NVIDIA
GPUs of its host; the order of its devices is the order it lists them in, which
is also their CUDA ordinal order once `cuda_env` is applied.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.cgroups import CGROUP_ROOT, SELF_CGROUP, cgroup_cpu_limit, cgroup_memory


@dataclass(frozen=True)
class DeviceInfo:
    """Plain mirror of common_pb2.Device, plus the GPU's NVML UUID (not sent over the proto)."""

    id: str
    kind: str  # "cpu" or "cuda"
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    host: str
    uuid: str = ""  # "GPU-..." for CUDA devices; "" for the CPU

    def to_proto(self) -> common_pb2.Device:
        kind = common_pb2.DEVICE_KIND_CUDA if self.kind == "cuda" else common_pb2.DEVICE_KIND_CPU
        return common_pb2.Device(
            id=self.id,
            kind=kind,
            index=self.index,
            name=self.name,
            total_memory_bytes=self.total_memory_bytes,
            free_memory_bytes=self.free_memory_bytes,
            host=self.host,
        )


class DeviceProbe(Protocol):
    """Reports the current figures of the runner's devices, in the runner's order;
    `close` releases driver handles."""

    def probe(self) -> list[DeviceInfo]: ...

    def close(self) -> None: ...


def _invalid(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, msg)


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class CpuProbe:
    """System RAM, capped by the runner's cgroup memory limit, and the CPU model.

    In a container psutil sees the node's RAM; the scheduler must see what the
    container may use, or it places models that get the runner OOM-killed.
    """

    def __init__(self, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> None:
        self._name = cpu_model_name()
        self._cgroup_root = cgroup_root
        self._self_cgroup = self_cgroup

    def probe(self) -> list[DeviceInfo]:
        mem = psutil.virtual_memory()
        total, free = int(mem.total), int(mem.available)
        cg = cgroup_memory(self._cgroup_root, self._self_cgroup)
        if cg is not None:
            total, free = min(total, cg.limit), min(free, cg.available)
        return [
            DeviceInfo(
                id="cpu",
                kind="cpu",
                index=0,
                name=self._name,
                total_memory_bytes=total,
                free_memory_bytes=max(0, free),
                host=socket.gethostname(),
            )
        ]

    def close(self) -> None:
        pass


def _text(value: Any) -> str:
    """NVML strings are bytes in old nvidia-ml-py releases, str in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlProbe:
    """NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py), one nvmlInit for all.

    `indices` are NVML indices in the runner's order; None = every GPU NVML sees.
    """

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise _invalid("nvidia-ml-py is not installed") from exc
        self._nvml: Any = pynvml
        self._lock = threading.Lock()
        wanted = ", ".join(f"cuda:{i}" for i in indices) if indices else "cuda"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise _invalid(f"cannot use {wanted}: NVIDIA driver not available ({exc})") from exc
        self._open = True
        try:
            self._gpus = self._open_gpus(indices)
        except BaseException:
            self.close()
            raise

    def _open_gpus(self, indices: Sequence[int] | None) -> list[tuple[int, Any, str, str]]:
        """(index, handle, name, uuid) of each GPU; a missing index is an error."""
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        if indices is None:
            if count == 0:
                raise _invalid("cuda: no NVIDIA GPU found")
            indices = range(count)
        for index in indices:
            if not 0 <= index < count:
                raise _invalid(f"cuda:{index} does not exist ({count} NVIDIA GPU(s) found)")
        gpus = []
        for index in indices:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append((index, handle, _text(nvml.nvmlDeviceGetName(handle)), _text(nvml.nvmlDeviceGetUUID(handle))))
        return gpus

    def probe(self) -> list[DeviceInfo]:
        host = socket.gethostname()
        with self._lock:
            if not self._open:
                raise RuntimeError("NVML probe is closed")
            mems = [self._nvml.nvmlDeviceGetMemoryInfo(handle) for _i, handle, _n, _u in self._gpus]
        return [
            DeviceInfo(
                id=f"cuda:{index}",
                kind="cuda",
                index=index,
                name=name,
                total_memory_bytes=int(mem.total),
                free_memory_bytes=int(mem.free),
                host=host,
                uuid=uuid,
            )
            for (index, _h, name, uuid), mem in zip(self._gpus, mems, strict=True)
        ]

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()


def nvidia_gpu_count() -> int:
    """NVIDIA GPUs visible through NVML; 0 when there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


_USAGE = "use cpu, cuda:N, a list such as cuda:0,1, or cuda for every GPU"


def _cuda_index(item: str, first: bool, device: str) -> int:
    """The N of "cuda:N" (any item) or "N" (items after the first)."""
    if item.startswith("cuda:"):
        item = item[len("cuda:") :].strip()
    elif first:
        raise _invalid(f"unknown runner device {device!r}; {_USAGE}")
    if not item.isdigit():
        raise _invalid(f"unknown runner device {device!r}; {_USAGE}")
    return int(item)


def parse_device(device: str) -> tuple[str, tuple[int, ...] | None]:
    """What CORRAL_RUNNER_DEVICE names, in the runner's order.

    "cpu" -> ("cpu", ()); "cuda:1" -> ("cuda", (1,)); "cuda:0,1" and "cuda:0,cuda:1" ->
    ("cuda", (0, 1)); bare "cuda" -> ("cuda", None), every GPU NVML sees (the probe
    resolves it). Existence of the GPUs is checked by `NvmlProbe`.
    """
    items = [item.strip() for item in device.strip().lower().split(",")]
    if items == ["cpu"]:
        return "cpu", ()
    if items == ["cuda"]:
        return "cuda", None
    if "cpu" in items:
        if all(item == "cpu" for item in items):
            raise _invalid(f"runner device {device!r} names cpu more than once")
        raise _invalid(f"runner device {device!r} mixes cpu and cuda; a runner drives the CPU or GPUs")
    if "cuda" in items:
        raise _invalid(f"runner device {device!r}: bare cuda means every GPU and cannot be part of a list")
    indices = tuple(_cuda_index(item, i == 0, device) for i, item in enumerate(items))
    dup = sorted({i for i in indices if indices.count(i) > 1})
    if dup:
        raise _invalid(f"runner device {device!r} names cuda:{dup[0]} more than once")
    return "cuda", indices


def probe_for(device: str) -> DeviceProbe:
    kind, indices = parse_device(device)
    if kind == "cpu":
        return CpuProbe()
    return NvmlProbe(indices)


def device_tag(devices: Sequence[DeviceInfo]) -> str:
    """Short name of a device list for ids and file names: "cpu", "cuda0", "cuda0-1"."""
    gpus = [d for d in devices if d.kind == "cuda"]
    if not gpus:
        return "cpu"
    return "cuda" + "-".join(str(d.index) for d in gpus)


def cuda_env(devices: Sequence[DeviceInfo]) -> dict[str, str]:
    """The CUDA environment that makes CUDA ordinal k the runner's k-th device.

    NVML indices (Device.index) and CUDA ordinals differ unless the order is
    PCI_BUS_ID, and llama.cpp uses every GPU CUDA sees, so a GPU runner lists its
    GPUs' UUIDs, in its own order, in CUDA_VISIBLE_DEVICES. A CPU runner hides
    every GPU, so a CUDA build of llama.cpp cannot put buffers on one behind the
    scheduler's back. The runner's device list is the truth: this overrides
    whatever the environment said.
    """
    uuids = [d.uuid for d in devices if d.kind == "cuda"]
    if any(not u for u in uuids):
        raise _invalid("a CUDA device has no NVML UUID; cannot pin CUDA_VISIBLE_DEVICES")
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(uuids)}


def physical_cores() -> int:
    """Physical cores (decode is memory-bound; hyperthreads do not help)."""
    n = psutil.cpu_count(logical=False)
    return max(1, n or os.cpu_count() or 1)


def _affinity_cpus() -> int | None:
    """Logical CPUs this process may run on (taskset, cpuset, Kubernetes static CPU policy)."""
    if not hasattr(os, "sched_getaffinity"):  # not on macOS
        return None
    return len(os.sched_getaffinity(0)) or None


def cpu_threads(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """Default llama.cpp threads: physical cores, capped by the CPU affinity and the
    cgroup CPU quota. More threads than the quota allows get throttled, and a throttled
    thread stalls every decode step, which waits for all threads."""
    n = physical_cores()
    affinity = _affinity_cpus()
    if affinity is not None:
        n = min(n, affinity)
    quota = cgroup_cpu_limit(root, self_cgroup)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)
