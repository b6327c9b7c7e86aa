"""The scheduler through its gRPC API, with fake runners that speak the real runner proto."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from corral.errors import from_rpc_error
from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, runner_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.core import QUEUE_FULL_MESSAGE, Scheduler, SchedulerConfig
from services.scheduler.runners import GrpcRunnerClient
from services.scheduler.servicer import FOREVER_SECONDS, SchedulerServicer
from tests.scheduler.fake_runner import GIB, FakeRunner, cpu_device, gpu_device


class Stack:
    def __init__(self, config: SchedulerConfig) -> None:
        self.core = Scheduler(config, GrpcRunnerClient())
        servicer = SchedulerServicer(self.core)

        def register(server: grpc.aio.Server) -> list[str]:
            scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
            return ["corral.v1.SchedulerService"]

        self.service = GrpcService("scheduler", "127.0.0.1:0", register)
        self.address = f"127.0.0.1:{self.service.port}"
        self.runners: list[FakeRunner] = []

    async def start(self) -> None:
        await self.service.start()
        await self.core.start()
        self.channel = channel(self.address)
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)

    async def runner(self, *devices: common_pb2.Device) -> FakeRunner:
        r = FakeRunner(f"runner-{uuid.uuid4().hex[:6]}", list(devices), self.address)
        await r.start()
        self.runners.append(r)
        return r

    async def stop(self) -> None:
        for r in self.runners:
            await r.kill()
        await self.channel.close()
        await self.core.stop()
        await self.service.stop(0)


@pytest.fixture
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    overrides = getattr(request, "param", {})
    settings = {"heartbeat_interval": 0.1, "runner_timeout": 0.6, "load_timeout": 5.0, "load_poll": 0.05, **overrides}
    config = SchedulerConfig(**settings)
    s = Stack(config)
    await s.start()
    yield s
    await s.stop()


def spec(name: str = "m1", size: int = GIB) -> scheduler_pb2.ModelSpec:
    return scheduler_pb2.ModelSpec(
        name=f"{name}:latest",
        manifest_digest=f"sha256:{name}-manifest",
        model_digest=f"sha256:{name}",
        model_path=f"/models/{name}.gguf",
        model_size_bytes=size,
        context_length_train=8192,
    )


def acquire_req(name: str = "m1", keep_alive: float | None = None, **opts: int) -> scheduler_pb2.AcquireModelRequest:
    req = scheduler_pb2.AcquireModelRequest(model=spec(name), options=common_pb2.LoadOptions(num_gpu=-1, **opts))
    if keep_alive is not None:
        req.keep_alive_seconds = keep_alive
    return req


async def test_load_then_reuse(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    first = await stack.stub.AcquireModel(acquire_req())
    assert first.runner_address == runner.address
    assert first.load_duration_ns > 0
    assert first.context_length == 4096  # CPU tier, under the model's 8192
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=first.lease_id))
    second = await stack.stub.AcquireModel(acquire_req())
    assert second.instance_id == first.instance_id
    assert second.load_duration_ns == 0
    assert len(runner.loads) == 1
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    assert [m.name for m in ps.models] == ["m1:latest"]
    assert ps.models[0].size_bytes == GIB + GIB // 4


async def test_changed_load_options_reload(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    a = await stack.stub.AcquireModel(acquire_req(num_batch=256))
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=a.lease_id))
    b = await stack.stub.AcquireModel(acquire_req(num_batch=128))
    assert b.instance_id != a.instance_id
    assert runner.unloads == [a.instance_id]
    assert [r.options.num_batch for r in runner.loads] == [256, 128]


async def test_a_longer_loaded_context_serves_shorter_ones(stack: Stack) -> None:
    """Unlike Ollama, a request for a shorter num_ctx (or none) does not reload the model;
    its lease carries its own context for the runner to hold it to. A longer one reloads,
    and the longer instance then serves the shorter requests too."""
    runner = await stack.runner(cpu_device())
    a = await stack.stub.AcquireModel(acquire_req(num_ctx=2048))
    assert a.context_length == 2048
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=a.lease_id))
    b = await stack.stub.AcquireModel(acquire_req(num_ctx=1024))
    assert (b.instance_id, b.context_length, b.load_duration_ns) == (a.instance_id, 1024, 0)
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=b.lease_id))
    c = await stack.stub.AcquireModel(acquire_req(num_ctx=8192))
    assert c.instance_id != a.instance_id and c.context_length == 8192
    assert runner.unloads == [a.instance_id]
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=c.lease_id))
    d = await stack.stub.AcquireModel(acquire_req())  # no num_ctx: the CPU default, 4096
    assert (d.instance_id, d.context_length) == (c.instance_id, 4096)
    assert [r.options.num_ctx for r in runner.loads] == [2048, 8192]
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    assert [m.context_length for m in ps.models] == [8192]
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=d.lease_id))
    # Another model on the same weights (a copy, a Modelfile over it) shares it too: /api/ps
    # lists it under the instance, and unloading that model by its manifest unloads it.
    copy = acquire_req(num_ctx=1024)
    copy.model.name, copy.model.manifest_digest = "m1-copy:latest", "sha256:m1-copy-manifest"
    e = await stack.stub.AcquireModel(copy)
    assert (e.instance_id, e.context_length, e.load_duration_ns) == (c.instance_id, 1024, 0)
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=e.lease_id))
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    assert [(m.name, list(m.also_serving)) for m in ps.models] == [("m1:latest", ["m1-copy:latest"])]
    other = scheduler_pb2.SchedulerUnloadModelRequest(model_digest="sha256:m1", manifest_digest="sha256:m2-manifest")
    assert not (await stack.stub.UnloadModel(other)).unloading
    by_copy = scheduler_pb2.SchedulerUnloadModelRequest(
        model_digest="sha256:m1", manifest_digest="sha256:m1-copy-manifest"
    )
    assert (await stack.stub.UnloadModel(by_copy)).unloading
    await asyncio.sleep(0.1)
    assert runner.unloads == [a.instance_id, c.instance_id]


async def test_keep_alive_zero_unloads_after_release(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req(keep_alive=0))
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
    await asyncio.sleep(0.2)
    assert runner.unloads == [lease.instance_id]
    assert not (await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())).models


async def test_a_keep_alive_beyond_any_date_is_forever(stack: Stack) -> None:
    """gRPC clients send seconds as they like: 1e20 once became an expiry no Timestamp holds,
    and every later ListLoadedModels failed. NaN is refused."""
    await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req(keep_alive=1e20))
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    assert ps.models[0].expires_at.seconds == FOREVER_SECONDS
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub.AcquireModel(acquire_req(keep_alive=math.nan))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_keep_alive_expiry(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req(keep_alive=0.3))
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
    assert (await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())).models
    await asyncio.sleep(0.6)
    assert runner.unloads == [lease.instance_id]


async def test_unload_model_request(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req())
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
    resp = await stack.stub.UnloadModel(scheduler_pb2.SchedulerUnloadModelRequest(model_digest="sha256:m1"))
    assert resp.unloading
    await asyncio.sleep(0.1)
    assert runner.unloads == [lease.instance_id]


@pytest.mark.parametrize("stack", [{"max_loaded_models": 1}], indirect=True)
async def test_max_loaded_models_evicts(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    a = await stack.stub.AcquireModel(acquire_req("m1"))
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=a.lease_id))
    await stack.stub.AcquireModel(acquire_req("m2"))
    assert runner.unloads == [a.instance_id]
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    assert [m.name for m in ps.models] == ["m2:latest"]


@pytest.mark.parametrize("stack", [{"num_parallel": 1, "max_queue": 2}], indirect=True)
async def test_bounded_queue_rejects_quickly(stack: Stack) -> None:
    await stack.runner(cpu_device())
    first = await stack.stub.AcquireModel(acquire_req())  # loaded and busy: every other request must queue

    async def one() -> str:
        try:
            lease = await stack.stub.AcquireModel(acquire_req(), timeout=10)
        except grpc.RpcError as err:
            e = from_rpc_error(err)
            assert e.message == QUEUE_FULL_MESSAGE
            return e.reason_name
        await asyncio.sleep(0.05)
        await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
        return "ok"

    tasks = [asyncio.create_task(one()) for _ in range(9)]
    await asyncio.sleep(0.3)
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=first.lease_id))
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert results.count("ok") == 2
    assert results.count("QUEUE_FULL") == 7


async def test_dead_runner_is_forgotten_and_model_reloads_elsewhere(stack: Stack) -> None:
    old = await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req())
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id))
    await old.kill()
    await asyncio.sleep(1.0)  # > runner_timeout
    assert not (await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())).models
    pending = asyncio.ensure_future(stack.stub.AcquireModel(acquire_req(), timeout=5))
    await asyncio.sleep(0.2)
    assert not pending.done()  # waits for a runner
    new = await stack.runner(cpu_device())
    again = await pending
    assert again.runner_address == new.address


async def test_runner_failure_reported_by_gateway(stack: Stack) -> None:
    old = await stack.runner(cpu_device())
    lease = await stack.stub.AcquireModel(acquire_req())
    await old.kill()
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=lease.lease_id, runner_failed=True))
    assert not (await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())).models


async def test_gpu_that_appears_later_gets_new_models(stack: Stack) -> None:
    cpu = await stack.runner(cpu_device())
    a = await stack.stub.AcquireModel(acquire_req("m1"))
    assert a.runner_address == cpu.address
    gpu = await stack.runner(gpu_device(0, 24 * GIB))
    b = await stack.stub.AcquireModel(acquire_req("m2"))
    assert b.runner_address == gpu.address
    assert b.context_length == 8192  # 24 GiB tier (32768) capped at the model's trained length
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    by_name = {m.name: m for m in ps.models}
    assert by_name["m2:latest"].size_vram_bytes == by_name["m2:latest"].size_bytes
    assert by_name["m1:latest"].size_vram_bytes == 0


@pytest.mark.parametrize("stack", [{"num_parallel": 1, "max_queue": 1}], indirect=True)
async def test_cancelled_waiter_leaves_the_queue_at_once(stack: Stack) -> None:
    await stack.runner(cpu_device())
    held = await stack.stub.AcquireModel(acquire_req())
    waiter = asyncio.ensure_future(stack.stub.AcquireModel(acquire_req()))
    await asyncio.sleep(0.1)
    assert (await stack.stub.GetInfo(scheduler_pb2.GetInfoRequest())).queued_requests == 1
    waiter.cancel()
    await asyncio.sleep(0.1)
    assert (await stack.stub.GetInfo(scheduler_pb2.GetInfoRequest())).queued_requests == 0
    # The slot is free for the next waiter: the queue did not keep the cancelled one.
    second = asyncio.ensure_future(stack.stub.AcquireModel(acquire_req(), timeout=5))
    await asyncio.sleep(0.1)
    await stack.stub.ReleaseModel(scheduler_pb2.ReleaseModelRequest(lease_id=held.lease_id))
    assert (await second).instance_id == held.instance_id


def big_spec(name: str, layers: int, layer_bytes: int) -> scheduler_pb2.ModelSpec:
    s = spec(name, size=layers * layer_bytes)
    s.geometry.CopyFrom(
        common_pb2.ModelGeometry(
            block_count=layers,
            embedding_length=8192,
            head_count=64,
            head_count_kv=8,
            layer_bytes=[layer_bytes] * layers,
            other_bytes=GIB,
            vocab_size=128_000,
        )
    )
    return s


async def test_two_80gb_gpus_place_whole_models_then_offload_partially(stack: Stack) -> None:
    gpu0 = await stack.runner(gpu_device(0, 80 * GIB))
    gpu1 = await stack.runner(gpu_device(1, 80 * GIB))
    # A 40 GiB model fits whole on either GPU; the second goes to the GPU with more room.
    a = await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("a", 40, GIB)))
    b = await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("b", 40, GIB)))
    assert {a.runner_address, b.runner_address} == {gpu0.address, gpu1.address}
    assert gpu0.loads[0].options.num_gpu == -1
    # A 120 GiB model fits on neither: while a and b are busy it is offloaded partially.
    c = await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("c", 120, GIB)))
    runner = gpu0 if c.runner_address == gpu0.address else gpu1
    layers = runner.loads[-1].options.num_gpu
    assert 0 < layers < 120
    info = await stack.stub.GetInfo(scheduler_pb2.GetInfoRequest())
    assert info.max_loaded_models == 6
    assert info.default_context_length == 262144
    assert sorted(d.device.id for r in info.runners for d in r.devices) == ["cuda:0", "cuda:1"]
    assert all(d.allocated_bytes > 0 for r in info.runners for d in r.devices)


async def test_one_runner_with_two_gpus_spreads_what_one_cannot_hold(stack: Stack) -> None:
    runner = await stack.runner(gpu_device(0, 80 * GIB), gpu_device(1, 80 * GIB))
    # 40 GiB fits one GPU: it goes there whole, no split.
    await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("a", 40, GIB)))
    small = runner.loads[-1].options
    assert small.HasField("main_gpu") and not small.tensor_split
    # 120 GiB fits neither GPU alone: it is spread over both, by layers.
    await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("c", 120, GIB)))
    big = runner.loads[-1].options
    assert not big.HasField("main_gpu") and big.num_gpu == -1
    assert len(big.tensor_split) == 2 and all(share > 0 for share in big.tensor_split)
    assert sum(big.tensor_split) == 121  # 120 blocks and the head
    ps = await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())
    spread = next(m for m in ps.models if m.name == "c:latest")
    assert sorted(d.device_id for d in spread.devices) == ["cuda:0", "cuda:1"]
    assert spread.size_vram_bytes == sum(d.bytes for d in spread.devices)
    info = await stack.stub.GetInfo(scheduler_pb2.GetInfoRequest())
    (r,) = info.runners
    assert [d.device.id for d in r.devices] == ["cuda:0", "cuda:1"] and r.loaded_models == 2
    assert all(d.allocated_bytes > 0 for d in r.devices)
    assert info.max_loaded_models == 6  # 3 per GPU, whichever runner drives them


async def test_instances_unknown_to_the_scheduler_are_unloaded(stack: Stack) -> None:
    """A runner still holding a model from before a scheduler restart gets it unloaded."""
    runner = FakeRunner("survivor", [cpu_device()], stack.address)
    runner.loaded["ghost"] = runner_pb2.LoadModelRequest(instance_id="ghost")
    runner.busy = 0  # idle: one still serving a stream is left alone (test_keep_alive_clock.py)
    await runner.start()
    stack.runners.append(runner)
    for _ in range(50):  # heartbeats every 0.1 s
        if "ghost" in runner.unloads:
            break
        await asyncio.sleep(0.1)
    assert not runner.loaded
    # Instances the scheduler placed itself stay loaded.
    await stack.stub.AcquireModel(acquire_req())
    await asyncio.sleep(0.5)  # several heartbeats
    assert len(runner.loaded) == 1 and runner.unloads == ["ghost"]


@pytest.mark.parametrize("stack", [{"sched_spread": True}], indirect=True)
async def test_sched_spread_spreads_every_model(stack: Stack) -> None:
    runner = await stack.runner(gpu_device(0, 24 * GIB), gpu_device(1, 24 * GIB))
    await stack.stub.AcquireModel(scheduler_pb2.AcquireModelRequest(model=big_spec("a", 8, GIB // 2)))
    opts = runner.loads[-1].options
    assert not opts.HasField("main_gpu") and len(opts.tensor_split) == 2 and min(opts.tensor_split) > 0


@pytest.mark.parametrize("stack", [{"load_timeout": 0.5}], indirect=True)
async def test_load_timeout_restarts_while_the_runner_makes_progress(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    runner.load_steps, runner.load_step = 10, 0.2  # 2 s in all, well past the 0.5 s stall timeout
    lease = await stack.stub.AcquireModel(acquire_req(), timeout=10)
    assert lease.runner_address == runner.address
    assert lease.load_duration_ns > 1_500_000_000


@pytest.mark.parametrize("stack", [{"load_timeout": 0.5}], indirect=True)
async def test_a_stalled_load_fails_with_a_clear_error(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    runner.load_steps, runner.load_step, runner.stall_at = 20, 0.2, 0.3  # stuck at 30 %
    with pytest.raises(grpc.RpcError) as exc:
        await stack.stub.AcquireModel(acquire_req(), timeout=10)
    err = from_rpc_error(exc.value)
    assert err.reason_name == "LOAD_FAILED"
    assert "no progress" in err.message and "30% loaded" in err.message
    assert not (await stack.stub.ListLoadedModels(scheduler_pb2.ListLoadedModelsRequest())).models


@pytest.mark.parametrize("stack", [{"num_parallel": 1, "lease_idle_timeout": 0.3}], indirect=True)
async def test_leases_of_a_vanished_client_are_reclaimed(stack: Stack) -> None:
    runner = await stack.runner(cpu_device())
    await stack.stub.AcquireModel(acquire_req())  # a gateway that crashes before releasing
    runner.busy = 0  # and nothing runs on the runner any more
    second = await stack.stub.AcquireModel(acquire_req(), timeout=5)
    assert second.runner_address == runner.address


@pytest.mark.parametrize("stack", [{"num_parallel": 1, "lease_idle_timeout": 0.3}], indirect=True)
async def test_leases_with_work_on_the_runner_are_kept(stack: Stack) -> None:
    await stack.runner(cpu_device())  # reports one active sequence: the lease is in use
    await stack.stub.AcquireModel(acquire_req())
    with pytest.raises(grpc.RpcError) as exc:
        await stack.stub.AcquireModel(acquire_req(), timeout=1.0)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
