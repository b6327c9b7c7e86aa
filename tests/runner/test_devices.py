from __future__ import annotations

import socket
import sys
import types
from dataclasses import dataclass

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.core import Runner
from services.runner.devices import (
    CpuProbe,
    DeviceInfo,
    NvmlProbe,
    cuda_env,
    device_tag,
    parse_device,
    physical_cores,
    probe_for,
)
from tests.runner.conftest import FakeProbe


def test_cpu_probe_reports_system_memory() -> None:
    probe = CpuProbe()
    [dev] = probe.probe()
    assert (dev.id, dev.kind, dev.index, dev.uuid) == ("cpu", "cpu", 0, "")
    assert dev.name
    assert 0 < dev.free_memory_bytes <= dev.total_memory_bytes
    assert dev.host == socket.gethostname()
    pb = dev.to_proto()
    assert pb.kind == common_pb2.DEVICE_KIND_CPU
    assert pb.total_memory_bytes == dev.total_memory_bytes
    probe.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu", ("cpu", ())),
        (" CPU ", ("cpu", ())),
        ("CUDA:1", ("cuda", (1,))),
        ("cuda:0,1", ("cuda", (0, 1))),
        ("cuda:0,cuda:1", ("cuda", (0, 1))),
        ("cuda:3, 1", ("cuda", (3, 1))),  # the runner's order is the order given
        ("cuda", ("cuda", None)),  # every GPU NVML sees
    ],
)
def test_parse_device(text: str, expected: tuple[str, tuple[int, ...] | None]) -> None:
    assert parse_device(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu", "unknown runner device"),
        ("cuda:x", "unknown runner device"),
        ("metal:0", "unknown runner device"),
        ("", "unknown runner device"),
        ("cuda:", "unknown runner device"),
        ("cuda:0,", "unknown runner device"),
        ("0,1", "unknown runner device"),
        ("cuda:0,1,0", "names cuda:0 more than once"),
        ("cuda:1,cuda:1", "names cuda:1 more than once"),
        ("cpu,cpu", "names cpu more than once"),
        ("cpu,cuda:0", "mixes cpu and cuda"),
        ("cuda:0,cpu", "mixes cpu and cuda"),
        ("cuda,cuda:1", "bare cuda means every GPU"),
    ],
)
def test_parse_device_rejects(text: str, message: str) -> None:
    with pytest.raises(CorralError) as exc:
        parse_device(text)
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert message in exc.value.message


def test_probe_for_cpu() -> None:
    assert isinstance(probe_for("cpu"), CpuProbe)


def test_nvml_probe_is_clear_about_a_missing_driver() -> None:
    try:
        probe = NvmlProbe([0])
    except CorralError as err:  # no NVIDIA driver or GPU here
        assert "cuda:0" in err.message
        return
    try:  # a machine with a GPU: the figures must be real
        [dev] = probe.probe()
        assert dev.kind == "cuda" and dev.id == "cuda:0" and dev.name and dev.uuid
        assert 0 < dev.free_memory_bytes <= dev.total_memory_bytes
        assert dev.to_proto().kind == common_pb2.DEVICE_KIND_CUDA
    finally:
        probe.close()
        probe.close()  # idempotent


@dataclass
class _Mem:
    total: int
    free: int


class FakeNvml(types.ModuleType):
    """Just the pynvml calls NvmlProbe makes, over `n` GPUs; counts init/shutdown."""

    class NVMLError(Exception):
        pass

    def __init__(self, n: int) -> None:
        super().__init__("pynvml")
        self.n = n
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        assert 0 <= index < self.n
        return 100 + index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA Fake 80GB"  # old nvidia-ml-py releases return bytes

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:04d}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        return _Mem(total=80 << 30, free=(handle - 100 + 1) << 30)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(4)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_nvml_probe_reports_several_gpus_in_the_runners_order(fake_nvml: FakeNvml) -> None:
    probe = probe_for("cuda:3,1")
    assert isinstance(probe, NvmlProbe)
    devs = probe.probe()
    assert [(d.id, d.index, d.uuid) for d in devs] == [("cuda:3", 3, "GPU-0103"), ("cuda:1", 1, "GPU-0101")]
    assert [d.free_memory_bytes for d in devs] == [4 << 30, 2 << 30]
    assert all(d.kind == "cuda" and d.name == "NVIDIA Fake 80GB" for d in devs)
    assert fake_nvml.inits == 1  # one nvmlInit for all GPUs
    probe.close()
    probe.close()
    assert fake_nvml.shutdowns == 1
    with pytest.raises(RuntimeError):
        probe.probe()


def test_bare_cuda_means_every_gpu(fake_nvml: FakeNvml) -> None:
    probe = probe_for("cuda")
    assert [d.id for d in probe.probe()] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    probe.close()


def test_a_missing_gpu_is_named(fake_nvml: FakeNvml) -> None:
    fake_nvml.n = 2
    with pytest.raises(CorralError) as exc:
        probe_for("cuda:0,7")
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert exc.value.message == "cuda:7 does not exist (2 NVIDIA GPU(s) found)"
    assert fake_nvml.shutdowns == 1  # the failed probe let NVML go


def test_bare_cuda_without_gpus_fails(fake_nvml: FakeNvml) -> None:
    fake_nvml.n = 0
    with pytest.raises(CorralError) as exc:
        probe_for("cuda")
    assert "no NVIDIA GPU" in exc.value.message


def _gpu(index: int, uuid: str) -> DeviceInfo:
    return DeviceInfo(f"cuda:{index}", "cuda", index, "GPU", 80 << 30, 70 << 30, "h", uuid)


def test_cuda_env_pins_the_runners_gpus_in_its_order() -> None:
    env = cuda_env([_gpu(3, "GPU-aaa"), _gpu(1, "GPU-bbb")])
    # CUDA ordinal 0 = cuda:3, ordinal 1 = cuda:1, whatever CUDA's own enumeration order.
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}


def test_cuda_env_hides_gpus_from_a_cpu_runner() -> None:
    assert cuda_env(FakeProbe().probe())["CUDA_VISIBLE_DEVICES"] == ""


def test_cuda_env_needs_uuids() -> None:
    with pytest.raises(CorralError):
        cuda_env([_gpu(0, "")])


def test_device_tag() -> None:
    assert device_tag(FakeProbe().probe()) == "cpu"
    assert device_tag([_gpu(0, "u0")]) == "cuda0"
    assert device_tag([_gpu(0, "u0"), _gpu(1, "u1")]) == "cuda0-1"


def test_physical_cores_is_positive() -> None:
    assert physical_cores() >= 1


def test_runner_reports_the_injected_probe() -> None:
    probe = FakeProbe(free=123)
    runner = Runner("r1", probe)
    [dev] = runner.devices()
    assert (dev.id, dev.free_memory_bytes) == ("fake:0", 123)
    probe.free = 456
    assert runner.devices()[0].free_memory_bytes == 456
