"""What device a runner drives and how much memory it has right now.

`probe_for("cpu" | "cuda:N")` picks a probe; tests inject their own `DeviceProbe`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from corral.errors import CorralError
from corral.v1 import common_pb2


@dataclass(frozen=True)
class DeviceInfo:
    """Plain mirror of common_pb2.Device."""

    id: str
    kind: str  # "cpu" or "cuda"
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    host: str

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
    """Reports the device's current figures; `close` releases driver handles."""

    def probe(self) -> DeviceInfo: ...

    def close(self) -> None: ...


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
    """System RAM and the CPU model."""

    def __init__(self) -> None:
        self._name = cpu_model_name()

    def probe(self) -> DeviceInfo:
        mem = psutil.virtual_memory()
        return DeviceInfo(
            id="cpu",
            kind="cpu",
            index=0,
            name=self._name,
            total_memory_bytes=int(mem.total),
            free_memory_bytes=int(mem.available),
            host=socket.gethostname(),
        )

    def close(self) -> None:
        pass


class NvmlProbe:
    """One NVIDIA GPU through NVML (the `pynvml` module of nvidia-ml-py)."""

    def __init__(self, index: int) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "nvidia-ml-py is not installed") from exc
        self._nvml: Any = pynvml
        self._lock = threading.Lock()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise CorralError(
                common_pb2.ERROR_REASON_INVALID_ARGUMENT,
                f"cannot use cuda:{index}: NVIDIA driver not available ({exc})",
            ) from exc
        self._open = True
        try:
            count = pynvml.nvmlDeviceGetCount()
            if not 0 <= index < count:
                raise CorralError(
                    common_pb2.ERROR_REASON_INVALID_ARGUMENT,
                    f"cuda:{index} does not exist ({count} NVIDIA GPU(s) found)",
                )
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
        except BaseException:
            self.close()
            raise
        self._index = index
        self._name = name.decode() if isinstance(name, bytes) else str(name)

    def probe(self) -> DeviceInfo:
        with self._lock:
            if not self._open:
                raise RuntimeError("NVML probe is closed")
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return DeviceInfo(
            id=f"cuda:{self._index}",
            kind="cuda",
            index=self._index,
            name=self._name,
            total_memory_bytes=int(mem.total),
            free_memory_bytes=int(mem.free),
            host=socket.gethostname(),
        )

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


def parse_device(device: str) -> tuple[str, int]:
    """("cpu", 0) for "cpu"; ("cuda", N) for "cuda:N" (bare "cuda" means cuda:0)."""
    value = device.strip().lower()
    if value == "cpu":
        return "cpu", 0
    kind, _, idx = value.partition(":")
    if kind == "cuda" and (idx == "" or idx.isdigit()):
        return "cuda", int(idx or 0)
    raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f"unknown runner device {device!r}; use cpu or cuda:N")


def probe_for(device: str) -> DeviceProbe:
    kind, index = parse_device(device)
    if kind == "cpu":
        return CpuProbe()
    return NvmlProbe(index)


def physical_cores() -> int:
    """Physical cores (decode is memory-bound; hyperthreads do not help)."""
    n = psutil.cpu_count(logical=False)
    return max(1, n or os.cpu_count() or 1)
