"""Placement decisions against injected inventories (pure functions, no I/O)."""

from __future__ import annotations

from corral.v1 import common_pb2, scheduler_pb2
from services.scheduler import placement
from services.scheduler.inventory import Device, Instance, Inventory, LoadKey, Runner, State

GIB = 1 << 30


def key(digest: str = "sha256:a", num_gpu: int = -1, main_gpu: int | None = None) -> LoadKey:
    return LoadKey(digest, 4096, 512, num_gpu, main_gpu, 0, 1, (), "f16", None)


def cpu(runner_id: str = "cpu", total: int = 24 * GIB) -> Runner:
    return Runner(runner_id, f"unix:/{runner_id}", Device("cpu", common_pb2.DEVICE_KIND_CPU, 0, "cpu", total, total))


def gpu(index: int, total: int, free: int | None = None) -> Runner:
    dev = Device(f"cuda:{index}", common_pb2.DEVICE_KIND_CUDA, index, "gpu", total, total if free is None else free)
    return Runner(f"gpu{index}", f"unix:/gpu{index}", dev)


def loaded(inv: Inventory, iid: str, runner: str, memory: int, leases: int = 0, last_used: float = 0.0) -> Instance:
    inst = Instance(iid, runner, key(f"sha256:{iid}"), scheduler_pb2.ModelSpec(), memory, 300.0)
    inst.state, inst.leases, inst.size_bytes, inst.last_used = State.READY, leases, memory, last_used
    inv.instances[iid] = inst
    return inst


def test_no_runner_waits() -> None:
    assert isinstance(placement.place(Inventory(), key(), GIB, 3), placement.Wait)


def test_single_cpu_places_on_it() -> None:
    inv = Inventory(runners={"cpu": cpu()})
    assert placement.place(inv, key(), GIB, 3) == placement.Place("cpu")


def test_gpu_preferred_over_cpu_when_it_fits() -> None:
    inv = Inventory(runners={"cpu": cpu(), "gpu0": gpu(0, 24 * GIB)})
    assert placement.place(inv, key(), 8 * GIB, 3) == placement.Place("gpu0")


def test_num_gpu_zero_forces_cpu() -> None:
    inv = Inventory(runners={"cpu": cpu(), "gpu0": gpu(0, 24 * GIB)})
    assert placement.place(inv, key(num_gpu=0), GIB, 3) == placement.Place("cpu")


def test_two_gpus_pick_the_one_with_room() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 80 * GIB), "gpu1": gpu(1, 80 * GIB)})
    loaded(inv, "big", "gpu0", 70 * GIB)
    assert placement.place(inv, key(), 40 * GIB, 6) == placement.Place("gpu1")


def test_main_gpu_is_honoured() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 80 * GIB), "gpu1": gpu(1, 80 * GIB)})
    assert placement.place(inv, key(main_gpu=0), GIB, 6) == placement.Place("gpu0")


def test_evicts_smallest_sufficient_idle_instance() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB)})
    loaded(inv, "a", "gpu0", 6 * GIB, last_used=1)
    loaded(inv, "b", "gpu0", 10 * GIB, last_used=2)
    loaded(inv, "busy", "gpu0", 6 * GIB, leases=1)
    # 24 - 22 - reserve leaves < 1 GiB; 6 GiB more needs one of a/b: the smaller one suffices.
    assert placement.place(inv, key(), 6 * GIB, 9) == placement.Evict(("a",))


def test_busy_models_mean_wait() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 24 * GIB)})
    loaded(inv, "busy", "gpu0", 20 * GIB, leases=1)
    assert isinstance(placement.place(inv, key(), 10 * GIB, 3), placement.Wait)


def test_max_loaded_evicts_least_recently_used() -> None:
    inv = Inventory(runners={"cpu": cpu()})
    loaded(inv, "old", "cpu", GIB, last_used=1)
    loaded(inv, "new", "cpu", GIB, last_used=5)
    assert placement.place(inv, key(), GIB, 2) == placement.Evict(("old",))


def test_oversized_first_model_still_loads_on_empty_device() -> None:
    inv = Inventory(runners={"gpu0": gpu(0, 8 * GIB)})
    assert placement.place(inv, key(), 20 * GIB, 3) == placement.Place("gpu0")


def test_default_num_ctx_tiers_and_cap() -> None:
    assert placement.default_num_ctx(0, 0, 32768) == 4096
    assert placement.default_num_ctx(24 * GIB, 0, 131072) == 32768
    assert placement.default_num_ctx(80 * GIB, 0, 131072) == 131072
    assert placement.default_num_ctx(80 * GIB, 2048, 131072) == 2048
    assert placement.default_num_ctx(0, 8192, 0) == 8192
