from __future__ import annotations

import socket

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.core import Runner
from services.runner.devices import CpuProbe, NvmlProbe, parse_device, physical_cores, probe_for
from tests.runner.conftest import FakeProbe


def test_cpu_probe_reports_system_memory() -> None:
    probe = CpuProbe()
    dev = probe.probe()
    assert (dev.id, dev.kind, dev.index) == ("cpu", "cpu", 0)
    assert dev.name
    assert 0 < dev.free_memory_bytes <= dev.total_memory_bytes
    assert dev.host == socket.gethostname()
    pb = dev.to_proto()
    assert pb.kind == common_pb2.DEVICE_KIND_CPU
    assert pb.total_memory_bytes == dev.total_memory_bytes
    probe.close()


@pytest.mark.parametrize(("text", "expected"), [("cpu", ("cpu", 0)), ("CUDA:1", ("cuda", 1)), ("cuda", ("cuda", 0))])
def test_parse_device(text: str, expected: tuple[str, int]) -> None:
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "metal:0", ""])
def test_parse_device_rejects_unknown(text: str) -> None:
    with pytest.raises(CorralError) as exc:
        parse_device(text)
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT


def test_probe_for_cpu() -> None:
    assert isinstance(probe_for("cpu"), CpuProbe)


def test_nvml_probe_is_clear_about_a_missing_driver() -> None:
    try:
        probe = NvmlProbe(0)
    except CorralError as err:  # no NVIDIA driver or GPU here
        assert "cuda:0" in err.message
        return
    try:  # a machine with a GPU: the figures must be real
        dev = probe.probe()
        assert dev.kind == "cuda" and dev.id == "cuda:0" and dev.name
        assert 0 < dev.free_memory_bytes <= dev.total_memory_bytes
        assert dev.to_proto().kind == common_pb2.DEVICE_KIND_CUDA
    finally:
        probe.close()
        probe.close()  # idempotent


def test_physical_cores_is_positive() -> None:
    assert physical_cores() >= 1


def test_runner_reports_the_injected_probe() -> None:
    probe = FakeProbe(free=123)
    runner = Runner("r1", probe)
    dev = runner.device()
    assert (dev.id, dev.free_memory_bytes) == ("fake:0", 123)
    probe.free = 456
    assert runner.device().free_memory_bytes == 456
