"""LoadOptions placement on a multi-GPU runner: main_gpu, tensor_split, per-device memory.

No GPU is needed: these check the translation to llama.cpp's model params, not a load.
"""

from __future__ import annotations

from typing import Any

import llama_cpp as lc
import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2, runner_pb2
from services.runner.core import Runner
from services.runner.devices import DeviceInfo
from services.runner.native import MAX_DEVICES, LoadSpec, MemoryUsage, gpu_memory_by_device, set_placement
from services.runner.servicer import LoadDefaults, RunnerServicer, load_spec, memory_pb
from tests.runner.conftest import FakeProbe

MIB = 1 << 20


def gpu(index: int) -> DeviceInfo:
    return DeviceInfo(f"cuda:{index}", "cuda", index, "GPU", 80 << 30, 70 << 30, "h", f"GPU-{index}")


TWO_GPUS = [gpu(3), gpu(1)]  # the runner lists cuda:3 first: it is CUDA ordinal 0


def spec_for(devices: list[DeviceInfo], **options: Any) -> LoadSpec:
    req = runner_pb2.LoadModelRequest(model_path="/m.gguf", options=common_pb2.LoadOptions(**options))
    return load_spec(req, LoadDefaults(), devices)


def test_main_gpu_is_the_position_in_the_runners_list() -> None:
    spec = spec_for(TWO_GPUS, main_gpu=1)
    assert (spec.main_gpu, spec.tensor_split) == (1, ())
    assert spec_for(TWO_GPUS, main_gpu=3).main_gpu == 0
    assert spec.gpu_ids == ("cuda:3", "cuda:1")
    assert spec.num_gpu == -1  # unset = all layers


def test_tensor_split_wins_over_main_gpu() -> None:
    spec = spec_for(TWO_GPUS, main_gpu=1, tensor_split=[3.0, 1.0], num_gpu=20)
    assert (spec.main_gpu, spec.tensor_split, spec.num_gpu) == (None, (3.0, 1.0), 20)


def test_no_placement_on_two_gpus_is_llama_cpps_default_split() -> None:
    spec = spec_for(TWO_GPUS)
    assert (spec.main_gpu, spec.tensor_split) == (None, ())


def test_one_gpu_holds_the_whole_model_by_default() -> None:
    spec = spec_for([gpu(5)])
    assert (spec.main_gpu, spec.tensor_split, spec.gpu_ids) == (0, (), ("cuda:5",))


def test_a_cpu_runner_offloads_nothing() -> None:
    spec = spec_for(FakeProbe().probe(), main_gpu=0, tensor_split=[1.0, 1.0], num_gpu=99)
    assert (spec.num_gpu, spec.main_gpu, spec.tensor_split, spec.gpu_ids) == (0, None, (), ())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tensor_split": [1.0]}, "tensor_split has 1 entries; this runner drives 2 GPU(s) (cuda:3, cuda:1)"),
        ({"tensor_split": [1.0, 1.0, 1.0]}, "tensor_split has 3 entries"),
        ({"tensor_split": [0.0, 0.0]}, "not all zero"),
        ({"tensor_split": [1.0, -1.0]}, "non-negative"),
        ({"tensor_split": [1.0, float("nan")]}, "finite"),
        ({"main_gpu": 0}, "main_gpu 0 is not a GPU of this runner (cuda:3, cuda:1)"),
    ],
)
def test_bad_placement_is_invalid_argument(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CorralError) as exc:
        spec_for(TWO_GPUS, **options)
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert message in exc.value.message


def test_set_placement_tensor_split_is_a_layer_split() -> None:
    mp = lc.llama_model_default_params()
    keep = set_placement(mp, LoadSpec("/m.gguf", tensor_split=(3.0, 1.0)))
    assert keep is not None and len(keep) == MAX_DEVICES
    assert mp.split_mode == lc.LLAMA_SPLIT_MODE_LAYER
    assert [mp.tensor_split[i] for i in range(3)] == [3.0, 1.0, 0.0]  # mp points at the kept array


def test_set_placement_main_gpu_is_no_split() -> None:
    mp = lc.llama_model_default_params()
    assert set_placement(mp, LoadSpec("/m.gguf", main_gpu=1)) is None
    assert (mp.split_mode, mp.main_gpu) == (lc.LLAMA_SPLIT_MODE_NONE, 1)


def test_set_placement_default_leaves_llama_cpps_params() -> None:
    mp = lc.llama_model_default_params()
    default = lc.llama_model_default_params()
    assert set_placement(mp, LoadSpec("/m.gguf")) is None
    assert (mp.split_mode, mp.main_gpu, bool(mp.tensor_split)) == (default.split_mode, default.main_gpu, False)


def test_gpu_memory_maps_cuda_ordinals_to_the_runners_devices() -> None:
    by_buffer = {"CUDA1": 2 * MIB, "CUDA0": 5 * MIB}
    assert gpu_memory_by_device(by_buffer, ("cuda:3", "cuda:1")) == (("cuda:3", 5 * MIB), ("cuda:1", 2 * MIB))
    assert gpu_memory_by_device(by_buffer, ()) == (("cuda:0", 5 * MIB), ("cuda:1", 2 * MIB))  # not pinned
    assert gpu_memory_by_device({}, ("cuda:3",)) == ()


def test_memory_pb_lists_the_gpu_part_per_device() -> None:
    m = MemoryUsage(100, 20, 10, 80, (("cuda:3", 50), ("cuda:1", 30)))
    pb = memory_pb(m)
    assert pb.total_bytes == 130 and pb.gpu_bytes == 80
    assert [(d.device_id, d.bytes) for d in pb.devices] == [("cuda:3", 50), ("cuda:1", 30)]
    assert sum(d.bytes for d in pb.devices) == pb.gpu_bytes


class TwoGpuProbe:
    def probe(self) -> list[DeviceInfo]:
        return list(TWO_GPUS)

    def close(self) -> None:
        pass


async def test_load_model_rejects_a_wrong_split_before_loading() -> None:
    runner = Runner("r", TwoGpuProbe())
    req = runner_pb2.LoadModelRequest(
        instance_id="i", model_path="/m.gguf", options=common_pb2.LoadOptions(tensor_split=[1.0])
    )
    with pytest.raises(CorralError) as exc:
        await RunnerServicer(runner).LoadModel(req, None)  # type: ignore[arg-type]  # context unused
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert runner.status() == []
