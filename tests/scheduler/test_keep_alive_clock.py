"""Keep-alive and lease reclaim in the scheduler core, on a manual clock: no sleeping.

The core runs without gRPC; its runner client is an in-process fake that records loads and
unloads (the gRPC path is covered by test_scheduler_grpc.py)."""

from __future__ import annotations

import asyncio

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2, runner_pb2
from services.scheduler.clock import ManualClock
from services.scheduler.core import Scheduler, SchedulerConfig
from services.scheduler.inventory import Device
from tests.scheduler.fake_runner import GIB, cpu_device
from tests.scheduler.test_scheduler_grpc import spec

ADDRESS = "unix:/nowhere"


class Client:
    """RunnerClient in process: loads succeed at once; `busy` says what GetStatus reports."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.busy: dict[str, int] = {}

    async def load(
        self, address: str, request: runner_pb2.LoadModelRequest, timeout: float | None
    ) -> runner_pb2.LoadModelResponse:
        self.loads.append(request.instance_id)
        return runner_pb2.LoadModelResponse(
            context_length=request.options.num_ctx, memory=runner_pb2.MemoryUsage(total_bytes=GIB)
        )

    async def unload(self, address: str, instance_id: str) -> None:
        self.unloads.append(instance_id)

    async def status(self, address: str) -> runner_pb2.GetStatusResponse:
        return runner_pb2.GetStatusResponse(
            instances=[
                runner_pb2.InstanceStatus(instance_id=i, active_sequences=n)
                for i, n in self.busy.items()
                if i not in self.unloads
            ]
        )

    async def alive(self, address: str) -> bool:
        return True

    def reset(self, address: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def _scheduler(**config: float) -> tuple[Scheduler, Client, ManualClock]:
    clock, client = ManualClock(), Client()
    core = Scheduler(SchedulerConfig(keep_alive=300.0, **config), client, clock)
    await core.register("r1", ADDRESS, [Device.from_proto(cpu_device())])
    return core, client, clock


async def _settle() -> None:
    """Let the tasks the clock's timers spawned (unloads) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_keep_alive_expires_exactly_when_the_clock_says() -> None:
    core, client, clock = await _scheduler()
    lease = await core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=300.0)
    clock.advance(3600)  # a leased instance never expires
    await _settle()
    assert client.unloads == []
    await core.release(lease.id)
    (inst,) = core.loaded()
    assert inst.expires_at == clock.time() + 300
    clock.advance(299.9)
    await _settle()
    assert client.unloads == []
    clock.advance(0.2)
    await _settle()
    assert client.unloads == [lease.instance_id]
    assert core.loaded() == []


async def test_use_restarts_the_keep_alive_clock() -> None:
    core, client, clock = await _scheduler()
    lease = await core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=60.0)
    await core.release(lease.id)
    clock.advance(50)
    again = await core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=60.0)
    assert again.instance_id == lease.instance_id and client.loads == [lease.instance_id]
    await core.release(again.id)
    clock.advance(50)  # 100 s after the first release, 50 after the second
    await _settle()
    assert client.unloads == []
    clock.advance(11)
    await _settle()
    assert client.unloads == [lease.instance_id]


async def test_keep_alive_forever_and_zero() -> None:
    core, client, clock = await _scheduler()
    forever = await core.acquire(spec("a"), common_pb2.LoadOptions(), keep_alive=float("inf"))
    await core.release(forever.id)
    now = await core.acquire(spec("b"), common_pb2.LoadOptions(), keep_alive=0.0)
    await core.release(now.id)
    await _settle()
    assert client.unloads == [now.instance_id]  # at once, without the clock moving
    clock.advance(10 * 365 * 86400)
    await _settle()
    assert client.unloads == [now.instance_id]


async def test_abandoned_lease_is_reclaimed_after_the_idle_timeout() -> None:
    """A gateway that died holding a lease: once the runner reports the instance idle for
    lease_idle_timeout, the lease is dropped and keep-alive starts."""
    core, client, clock = await _scheduler(lease_idle_timeout=15.0)
    lease = await core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=30.0)
    client.busy[lease.instance_id] = 1
    await core._reclaim_abandoned_leases()
    clock.advance(60)
    await core._reclaim_abandoned_leases()  # busy on the runner: never reclaimed
    assert core.loaded()[0].leases == 1
    client.busy[lease.instance_id] = 0
    await core._reclaim_abandoned_leases()  # idle from now
    clock.advance(14)
    await core._reclaim_abandoned_leases()
    assert core.loaded()[0].leases == 1
    clock.advance(2)
    await core._reclaim_abandoned_leases()
    assert core.loaded()[0].leases == 0
    clock.advance(31)
    await _settle()
    assert client.unloads == [lease.instance_id]


async def test_a_stray_instance_is_unloaded_only_once_idle() -> None:
    """After a scheduler restart the runner still holds instances it loaded for the old one;
    one still streaming to a client is left alone until it is idle."""
    core, client, _ = await _scheduler()
    devices = [Device.from_proto(cpu_device())]
    client.busy["stray"] = 1
    assert await core.heartbeat("r1", devices, ["stray"])
    await _settle()
    assert client.unloads == []
    client.busy["stray"] = 0
    assert await core.heartbeat("r1", devices, ["stray"])
    await _settle()
    assert client.unloads == ["stray"]


async def test_waiting_behind_a_busy_model_is_queueing_not_a_load_timeout() -> None:
    """A request for a loaded model whose slots are all busy waits however long the others
    take, as in Ollama (Open WebUI's title request held the only slot for minutes while the
    user's chat timed out). The load timeout is for waits nothing will end."""
    core, _, _ = await _scheduler(load_timeout=0.3, heartbeat_interval=0.05)
    first = await core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=300.0)
    second = asyncio.create_task(core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=300.0))
    await asyncio.sleep(1.0)  # more than three load timeouts behind the busy slot
    assert not second.done()
    await core.release(first.id)
    lease = await asyncio.wait_for(second, 5)
    assert lease.instance_id == first.instance_id


async def test_with_no_runner_and_nothing_running_the_load_timeout_ends_the_wait() -> None:
    clock, client = ManualClock(), Client()
    core = Scheduler(SchedulerConfig(load_timeout=0.3, heartbeat_interval=0.05), client, clock)
    with pytest.raises(CorralError, match="timed out waiting for a runner"):
        await asyncio.wait_for(core.acquire(spec(), common_pb2.LoadOptions(), keep_alive=300.0), 5)
