"""One model over several GPUs of one runner: the split itself and the placement decisions."""

from __future__ import annotations

import bisect
import itertools

from corral.v1 import runner_pb2, scheduler_pb2
from services.scheduler import memory, placement
from services.scheduler.inventory import Instance, Inventory
from services.scheduler.loading import measured_by_device
from services.scheduler.memory import Estimate
from tests.scheduler.test_placement import GIB, cpu, est, gpus, key, loaded


def llama_cpp_devices(units: tuple[int, ...], n_offloaded: int) -> list[int]:
    """The device llama.cpp's layer split gives each offloaded unit for tensor_split=units:
    cumulative shares, then upper_bound of unit/n_offloaded (llama_model::load_tensors)."""
    total = sum(units)
    splits = [c / total for c in itertools.accumulate(units)]
    return [bisect.bisect_right(splits, j / n_offloaded) for j in range(n_offloaded)]


def test_split_is_proportional_to_room_and_matches_llama_cpps_assignment() -> None:
    e = Estimate(layers=(GIB,) * 30, rest=2 * GIB, kv=0, compute=GIB)
    s = memory.split(e, [40 * GIB, 20 * GIB])
    assert s is not None and s.gpu_layers == -1
    assert sum(s.units) == 31  # 30 blocks and the output
    # 32 GiB shared 39 : 19 (the room after each compute buffer) is 21.5 : 10.5 GiB.
    assert s.units == (22, 9)
    # llama.cpp puts unit j where we counted it, the output (last unit) on the last GPU.
    assert llama_cpp_devices(s.units, 31) == [0] * 22 + [1] * 9
    assert s.device_bytes == (22 * GIB + GIB, 8 * GIB + 2 * GIB + GIB)


def test_split_refuses_what_does_not_fit_and_offloads_the_last_blocks() -> None:
    e = Estimate(layers=(GIB,) * 30, rest=2 * GIB, kv=0, compute=GIB)
    assert memory.split(e, [16 * GIB, 16 * GIB]) is None  # 32 GiB of blocks + output > 30 GiB of room
    partial = memory.most_layers(e, [16 * GIB, 16 * GIB])
    assert partial is not None and partial.gpu_layers == 29  # the last 28 blocks and the head
    assert sum(partial.units) == 29 and all(b <= 16 * GIB for b in partial.device_bytes)
    assert memory.most_layers(e, [GIB, GIB]) is None  # no room beyond the compute buffers


def test_a_device_without_room_gets_nothing() -> None:
    e = Estimate(layers=(GIB,) * 4, rest=0, kv=0, compute=GIB)
    s = memory.split(e, [0, 8 * GIB])
    assert s is not None and s.units == (0, 5) and s.device_bytes == (0, 5 * GIB)


def test_model_that_fits_one_gpu_of_a_multi_gpu_runner_stays_on_one() -> None:
    inv = Inventory(runners={"multi": gpus(80 * GIB, 80 * GIB)})
    loaded(inv, "a", "multi", 30 * GIB, device="cuda:0")
    # The emptier GPU holds it whole, no split (no cross-GPU traffic per token).
    assert placement.place(inv, key(), est(40 * GIB), 6) == placement.Place("multi", main_gpu=1)


def test_model_too_big_for_one_gpu_is_spread_over_the_runners_gpus() -> None:
    inv = Inventory(runners={"multi": gpus(80 * GIB, 80 * GIB)})
    decision = placement.place(inv, key(), est(120 * GIB, layers=60), 6)
    assert isinstance(decision, placement.Place) and decision.main_gpu is None
    assert decision.tensor_split == (30, 31)  # 60 blocks evenly, the output on the last GPU
    by_device = dict(decision.device_bytes)
    assert set(by_device) == {"cuda:0", "cuda:1"} and sum(by_device.values()) == 120 * GIB
    assert all(b <= 80 * GIB - placement.DEVICE_RESERVE for b in by_device.values())


def test_sched_spread_spreads_even_a_small_model() -> None:
    inv = Inventory(runners={"multi": gpus(24 * GIB, 24 * GIB)})
    decision = placement.place(inv, key(), est(4 * GIB, layers=8), 6, spread=True)
    assert isinstance(decision, placement.Place)
    assert decision.main_gpu is None and decision.tensor_split == (4, 5)  # the output (no bytes here) last


def test_main_gpu_pins_to_one_gpu_even_with_spread() -> None:
    inv = Inventory(runners={"multi": gpus(24 * GIB, 24 * GIB)})
    assert placement.place(inv, key(main_gpu=1), est(4 * GIB), 6, spread=True) == placement.Place("multi", main_gpu=1)


def test_spread_is_preferred_to_a_cpu_runner() -> None:
    inv = Inventory(runners={"cpu": cpu(total=256 * GIB), "multi": gpus(24 * GIB, 24 * GIB)})
    decision = placement.place(inv, key(), est(40 * GIB, layers=40), 6)
    assert isinstance(decision, placement.Place) and decision.runner_id == "multi" and decision.tensor_split


def test_eviction_frees_room_across_the_gpus_of_a_spread() -> None:
    inv = Inventory(runners={"multi": gpus(24 * GIB, 24 * GIB)})
    loaded(inv, "small", "multi", 2 * GIB, device="cuda:0", last_used=1)
    loaded(inv, "big", "multi", 12 * GIB, device="cuda:1", last_used=2)
    # 40 GiB over both GPUs needs the 12 GiB one gone; the 2 GiB one alone is not enough.
    assert placement.place(inv, key(), est(40 * GIB, layers=40), 6) == placement.Evict(("big",))


def test_partial_offload_uses_every_gpu_of_the_runner() -> None:
    inv = Inventory(runners={"multi": gpus(24 * GIB, 24 * GIB)})
    decision = placement.place(inv, key(), est(100 * GIB, layers=100), 6)
    assert isinstance(decision, placement.Place)
    # 23.5 GiB of room on each GPU holds 23 blocks: 46 of the 100 and the head (no bytes here),
    # twice what one GPU could.
    assert decision.gpu_layers == 47 and decision.tensor_split == (23, 24)


def test_a_gpu_runner_without_memory_figures_keeps_the_estimate_in_the_ledger() -> None:
    runner = gpus(24 * GIB, 24 * GIB)
    inst = Instance("i", "multi", key(), scheduler_pb2.ModelSpec(), 8 * GIB, {"cuda:0": 5 * GIB, "cuda:1": 3 * GIB}, 60)
    assert measured_by_device(inst, runner, runner_pb2.MemoryUsage(total_bytes=GIB)) == inst.estimate
    shared = measured_by_device(inst, runner, runner_pb2.MemoryUsage(total_bytes=GIB, gpu_bytes=8 * GIB // 2))
    assert shared == {"cuda:0": 5 * GIB // 2, "cuda:1": 3 * GIB // 2}
