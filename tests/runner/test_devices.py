from __future__ import annotations

import os
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import devices
from services.runner.cgroups import CgroupMemory, cgroup_cpu_limit, cgroup_memory
from services.runner.core import Runner
from services.runner.devices import (
    CpuProbe,
    DeviceInfo,
    NvmlProbe,
    cpu_threads,
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


# --- cgroup limits: fake /sys/fs/cgroup trees under tmp_path ---

GiB = 1 << 30
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 shows for "no limit" (4 KiB pages)


def _files(d: Path, **files: str) -> None:
    """Write cgroup files; keyword names use "__" for "." (memory__max -> memory.max)."""
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text + "\n")


def _v2(root: Path, path: str = "/", **files: str) -> Path:
    """A cgroup v2 tree with the process in `path`, which gets `files`."""
    _files(root, cgroup__controllers="cpu memory")
    d = root / path.lstrip("/")
    _files(d, **files)
    return d


def _self_cgroup(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "proc-self-cgroup"
    f.write_text(text)
    return f


class _VM(NamedTuple):
    total: int
    available: int


@pytest.fixture
def host_32g(monkeypatch: pytest.MonkeyPatch) -> _VM:
    """psutil reports a 32 GiB node with 20 GiB available."""
    vm = _VM(32 * GiB, 20 * GiB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
    return vm


def _cpu_dev(root: Path, self_cgroup: Path) -> DeviceInfo:
    [dev] = CpuProbe(root, self_cgroup).probe()
    return dev


def test_v2_memory_limit_caps_the_cpu_device(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    # In a container with its own cgroup namespace the process's cgroup is "/".
    _v2(root, memory__max=str(4 * GiB), memory__current=str(3 * GiB), memory__stat=f"anon 1\ninactive_file {GiB}")
    me = _self_cgroup(tmp_path, "0::/\n")
    # Working set = current - inactive_file (the kernel reclaims that page cache first).
    assert cgroup_memory(root, me) == CgroupMemory(limit=4 * GiB, available=2 * GiB)
    dev = _cpu_dev(root, me)
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (4 * GiB, 2 * GiB)


def test_v2_max_means_no_limit(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _v2(root, memory__max="max", memory__current=str(GiB), memory__stat="inactive_file 0", cpu__max="max 100000")
    me = _self_cgroup(tmp_path, "0::/\n")
    assert cgroup_memory(root, me) is None
    assert cgroup_cpu_limit(root, me) is None
    dev = _cpu_dev(root, me)
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (host_32g.total, host_32g.available)


def test_v2_finds_the_process_cgroup_and_its_ancestors(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _v2(root)  # the host's root cgroup has no memory.max
    # The pod's limit is higher, but its other containers leave it 1 GiB of headroom.
    _files(root / "kubepods" / "pod1", memory__max=str(8 * GiB), memory__current=str(7 * GiB), cpu__max="800000 100000")
    _v2(root, "/kubepods/pod1/c1", memory__max=str(6 * GiB), memory__current=str(GiB), cpu__max="250000 100000")
    me = _self_cgroup(tmp_path, "0::/kubepods/pod1/c1\n")
    assert cgroup_memory(root, me) == CgroupMemory(limit=6 * GiB, available=GiB)
    assert cgroup_cpu_limit(root, me) == 2.5


def test_v2_memory_over_the_limit_reports_zero_free(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _v2(root, memory__max=str(GiB), memory__current=str(2 * GiB))
    dev = _cpu_dev(root, _self_cgroup(tmp_path, "0::/\n"))
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (GiB, 0)


def test_v1_memory_limit(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _files(
        root / "memory",
        memory__limit_in_bytes=str(2 * GiB),
        memory__usage_in_bytes=str(GiB + GiB // 2),
        memory__stat=f"inactive_file 1\ntotal_inactive_file {GiB // 2}",
    )
    _files(root / "cpu", cpu__cfs_quota_us="150000", cpu__cfs_period_us="100000")
    # Docker without a cgroup namespace: the path names the container from the host's
    # root, but its own cgroup is what is mounted at /sys/fs/cgroup/memory.
    me = _self_cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_memory(root, me) == CgroupMemory(limit=2 * GiB, available=GiB)
    assert cgroup_cpu_limit(root, me) == 1.5
    dev = _cpu_dev(root, me)
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (2 * GiB, GiB)


def test_v1_huge_limit_means_no_limit(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _files(root / "memory", memory__limit_in_bytes=V1_UNLIMITED, memory__usage_in_bytes=str(GiB))
    _files(root / "cpu", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    me = _self_cgroup(tmp_path, "4:memory:/\n3:cpu,cpuacct:/\n")
    assert cgroup_memory(root, me) is None
    assert cgroup_cpu_limit(root, me) is None
    dev = _cpu_dev(root, me)
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (host_32g.total, host_32g.available)


def test_v1_limit_on_a_parent_cgroup(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "cg"
    _files(root / "memory", memory__limit_in_bytes=V1_UNLIMITED)
    _files(root / "memory" / "sandbox", memory__limit_in_bytes=str(3 * GiB), memory__usage_in_bytes=str(GiB))
    _files(root / "memory" / "sandbox" / "job", memory__limit_in_bytes=V1_UNLIMITED)
    me = _self_cgroup(tmp_path, "9:name=systemd:/\n4:memory:/sandbox/job\n")
    assert cgroup_memory(root, me) == CgroupMemory(limit=3 * GiB, available=2 * GiB)


def test_no_cgroup_files_gives_host_figures(tmp_path: Path, host_32g: _VM) -> None:
    root = tmp_path / "nothing"  # no /sys/fs/cgroup and no /proc/self/cgroup (e.g. macOS)
    me = tmp_path / "no-proc-self-cgroup"
    assert cgroup_memory(root, me) is None
    assert cgroup_cpu_limit(root, me) is None
    dev = _cpu_dev(root, me)
    assert (dev.total_memory_bytes, dev.free_memory_bytes) == (host_32g.total, host_32g.available)


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        ("400000 100000", 64, 4),  # a 4-CPU pod on a 64-core node: 4 threads, not 64
        ("150000 100000", 64, 2),  # 1.5 CPUs: round up, llama.cpp threads are whole
        ("50000 100000", 64, 1),  # at least one thread
        ("max 100000", 64, 16),  # no quota: the physical cores
        ("max 100000", 6, 6),  # taskset / cpuset: the CPUs this process may run on
    ],
)
def test_cpu_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, affinity: int, expected: int
) -> None:
    monkeypatch.setattr(devices, "physical_cores", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    root = tmp_path / "cg"
    _v2(root, cpu__max=cpu_max)
    assert cpu_threads(root, _self_cgroup(tmp_path, "0::/\n")) == expected


def test_cgroup_figures_on_this_machine_are_sane() -> None:
    """The real /sys/fs/cgroup, whatever it holds here: never more than the host has."""
    host = psutil.virtual_memory()
    [dev] = CpuProbe().probe()
    assert 0 < dev.total_memory_bytes <= host.total
    assert 0 < dev.free_memory_bytes <= dev.total_memory_bytes
    cg = cgroup_memory()
    if cg is not None:
        assert cg.limit > 0 and 0 <= cg.available <= cg.limit
    assert 1 <= cpu_threads() <= physical_cores()


def test_runner_reports_the_injected_probe() -> None:
    probe = FakeProbe(free=123)
    runner = Runner("r1", probe)
    [dev] = runner.devices()
    assert (dev.id, dev.free_memory_bytes) == ("fake:0", 123)
    probe.free = 456
    assert runner.devices()[0].free_memory_bytes == 456
