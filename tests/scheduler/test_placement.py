"""Placement decisions against injected inventories (pure functions, no I/O)."""

from __future__ import annotations

import math
from dataclasses import replace

from corral.v1 import common_pb2, scheduler_pb2
from services.scheduler import loading, memory, placement
from services.scheduler.inventory import Device, Instance, Inventory, LoadKey, Runner, State
from services.scheduler.memory import Estimate

GIB = 1 << 30


def key(digest: str = "sha256:a", num_gpu: int = -1, main_gpu: int | None = None) -> LoadKey:
    return LoadKey(digest, 4096, 512, num_gpu, main_gpu, 0, 1, (), "f16", None)


def cpu(runner_id: str = "cpu", total: int = 24 * GIB) -> Runner:
    return Runner(runner_id, f"unix:/{runner_id}", [Device("cpu", common_pb2.DEVICE_KIND_CPU, 0, "cpu", total, total)])


def cuda(index: int, total: int, free: int | None = None) -> Device:
    return Device(f"cuda:{index}", common_pb2.DEVICE_KIND_CUDA, index, "gpu", total, total if free is None else free)


def gpu(index: int, total: int, free: int | None = None) -> Runner:
    return Runner(f"gpu{index}", f"unix:/gpu{index}", [cuda(index, total, free)])


def gpus(*totals: int) -> Runner:
    """One runner driving several GPUs of its host."""
    return Runner("multi", "unix:/multi", [cuda(i, t) for i, t in enumerate(totals)])


def est(total: int, layers: int = 1) -> Estimate:
    """An estimate of `total` bytes spread evenly over `layers` blocks."""
    return Estimate(layers=(total // layers,) * layers, rest=0, kv=0, compute=0)


def loaded(
    inv: Inventory,
    iid: str,
    runner: str,
    memory: int,
    leases: int = 0,
    last_used: float = 0.0,
    keep_alive: float = 300.0,
    device: str = "",
) -> Instance:
    """A loaded instance holding `memory` bytes on `device` (default: the runner's first device)."""
    device = device or inv.runners[runner].devices[0].id
    inst = Instance(iid, runner, key(f"sha256:{iid}"), scheduler_pb2.ModelSpec(), memory, {device: memory}, keep_alive)
    inst.state, inst.leases, inst.size_bytes, inst.last_used = State.READY, leases, memory, last_used
    inst.measured = {device: memory}
    inst.size_vram_bytes = memory if device.startswith("cuda") else 0
    inv.instances[iid] = inst
    return inst


def test_no_runner_waits() -> None:
    assert isinstance(placement.place(Inventory(), key(), est(GIB), 3), placement.Wait)


def test_single_cpu_places_on_it() -> None:
    inv = Inventory(runners={"cpu": cpu()})
    assert placement.place(inv, key(), est(GIB), 3) == placement.Place("cpu")


def test_gpu_preferred_over_cpu_when_it_fits() -> None:
    inv = Inventory(runners={"cpu": cpu(), "gpu0": gpu(0, 24 * GIB)})
    assert placement.place(inv, key(), est(8 * GIB), 3) == placement.Place("gpu0", main_gpu=0)


def test_num_gpu_zero_forces_cpu() -> None:
    inv = Inventory(runners={"cpu": cpu(), "gpu0": gpu(0, 24 * GIB)})
    assert placement.place(inv, key(num_gpu=0), est(GIB), 3) == placement.Place("cpu", 0)


def test_two_gpus_pick_the_one_with_room() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 80 * GIB), "gpu1": gpu(1, 80 * GIB)})
    loaded(inv, "big", "gpu0", 70 * GIB)
    assert placement.place(inv, key(), est(40 * GIB), 6) == placement.Place("gpu1", main_gpu=1)


def test_main_gpu_is_honoured() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 80 * GIB), "gpu1": gpu(1, 80 * GIB)})
    assert placement.place(inv, key(main_gpu=0), est(GIB), 6) == placement.Place("gpu0", main_gpu=0)


def test_evicts_smallest_sufficient_idle_instance() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB)})
    loaded(inv, "a", "gpu0", 6 * GIB, last_used=1)
    loaded(inv, "b", "gpu0", 10 * GIB, last_used=2)
    loaded(inv, "busy", "gpu0", 6 * GIB, leases=1)
    # 24 - 22 - reserve leaves < 1 GiB; 6 GiB more needs one of a/b: the smaller one suffices.
    assert placement.place(inv, key(), est(6 * GIB), 9) == placement.Evict(("a",))


def test_busy_models_mean_wait() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB)})
    loaded(inv, "busy", "gpu0", 20 * GIB, leases=1)
    assert isinstance(placement.place(inv, key(), est(10 * GIB), 3), placement.Wait)


def test_max_loaded_evicts_least_recently_used() -> None:
    inv = Inventory(runners={"cpu": cpu()})
    loaded(inv, "old", "cpu", GIB, last_used=1)
    loaded(inv, "new", "cpu", GIB, last_used=5)
    assert placement.place(inv, key(), est(GIB), 2) == placement.Evict(("old",))


def test_oversized_model_is_partially_offloaded() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 8 * GIB)})
    # 20 blocks of 1 GiB; 8 GiB minus the reserve holds 7 of them, and the head (no bytes here):
    # llama.cpp's n_gpu_layers counts the head as a layer.
    assert placement.place(inv, key(), est(20 * GIB, layers=20), 3) == placement.Place("gpu0", 8, main_gpu=0)


def test_a_single_block_too_big_still_loads_on_an_empty_device() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 8 * GIB)})
    assert placement.place(inv, key(), est(20 * GIB), 3) == placement.Place("gpu0", main_gpu=0)


def test_pinned_models_are_evicted_only_when_nothing_else_frees_enough() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB)})
    loaded(inv, "pinned", "gpu0", 8 * GIB, keep_alive=math.inf)
    loaded(inv, "small", "gpu0", 2 * GIB)
    loaded(inv, "busy", "gpu0", 10 * GIB, leases=1)
    # 3.5 GiB are free: 4 GiB need "small" gone; 9 GiB need the pinned model too (the busy one stays).
    assert placement.place(inv, key(), est(4 * GIB), 9) == placement.Evict(("small",))
    assert placement.place(inv, key(), est(9 * GIB), 9) == placement.Evict(("pinned",))


def test_lagging_free_memory_report_does_not_block_a_load() -> None:
    runner = gpu(0, 24 * GIB, free=4 * GIB)  # the driver still shows 20 GiB we just unloaded as used
    inv = Inventory(runners={"gpu0": runner})
    runner.on_release({"cuda:0": 20 * GIB}, now=0.0)
    assert placement.place(inv, key(), est(16 * GIB), 3) == placement.Place("gpu0", main_gpu=0)
    # A report that shows the memory freed drains the unreported pool; a stale pool expires.
    runner.on_report([cuda(0, 24 * GIB, free=14 * GIB)], now=1.0, settle=5)
    assert runner.unreported_release == {"cuda:0": 10 * GIB}
    runner.on_report([cuda(0, 24 * GIB)], now=2.0, settle=5)
    assert runner.unreported_release == {"cuda:0": 0}
    runner.on_release({"cuda:0": GIB}, now=3.0)
    runner.on_report([cuda(0, 24 * GIB)], now=9.0, settle=5)
    assert runner.unreported_release == {}


def test_memory_used_by_other_processes_counts() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB, free=6 * GIB)})  # someone else holds 18 GiB
    assert placement.place(inv, key(), est(12 * GIB, layers=12), 3) == placement.Place("gpu0", 6, main_gpu=0)


def test_default_num_ctx_tiers_and_cap() -> None:
    assert placement.default_num_ctx(0, 0, 32768) == 4096
    assert placement.default_num_ctx(24 * GIB, 0, 131072) == 32768
    assert placement.default_num_ctx(80 * GIB, 0, 131072) == 131072
    assert placement.default_num_ctx(80 * GIB, 2048, 131072) == 2048
    assert placement.default_num_ctx(0, 8192, 0) == 8192


def test_a_draft_model_adds_its_weights_and_kv_to_the_estimate_and_the_load() -> None:
    spec = scheduler_pb2.ModelSpec(name="m", model_digest="sha256:a", model_path="/m", model_size_bytes=2 * GIB)
    spec.geometry.CopyFrom(
        common_pb2.ModelGeometry(block_count=2, embedding_length=64, head_count=4, layer_bytes=[GIB, GIB])
    )
    size = 300 << 20
    drafted = replace(key(), draft=("sha256:d", "/d", size))
    base, with_draft = memory.estimate(spec, key()), memory.estimate(spec, drafted)
    assert with_draft.total - base.total == size + 4096 * (size // 100_000)
    assert with_draft.offloaded(-1)[-1] > base.offloaded(-1)[-1]  # it goes where the output head goes
    inst = Instance("i", "gpu", drafted, spec, with_draft.total, {}, math.inf)
    opts = loading.load_request(inst).options
    assert (opts.draft.digest, opts.draft.path, opts.draft.size_bytes) == ("sha256:d", "/d", size)
    assert not opts.HasField("draft_num_predict")  # the runner's default
    assert not loading.load_request(replace(inst, key=key())).options.HasField("draft")
