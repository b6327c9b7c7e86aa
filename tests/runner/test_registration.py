"""Registration and heartbeats against a real gRPC scheduler stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
import pytest

from corral.config import Settings
from corral.grpc_server import GrpcService
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.runner.core import Runner
from services.runner.main import serve
from services.runner.registration import SchedulerLink
from tests.runner.conftest import FakeProbe, eventually


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self) -> None:
        self.registrations: list[scheduler_pb2.RegisterRunnerRequest] = []
        self.heartbeats: list[scheduler_pb2.HeartbeatRequest] = []
        self.forget_next = False

    async def RegisterRunner(
        self, request: scheduler_pb2.RegisterRunnerRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RegisterRunnerResponse:
        self.registrations.append(request)
        return scheduler_pb2.RegisterRunnerResponse(heartbeat_interval_ms=50)

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.HeartbeatResponse:
        self.heartbeats.append(request)
        known, self.forget_next = not self.forget_next, False
        return scheduler_pb2.HeartbeatResponse(known=known)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def scheduler_on(port: int) -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler()

    def add(server: grpc.aio.Server) -> list[str]:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(fake, server)
        return ["corral.v1.SchedulerService"]

    service = GrpcService("scheduler", f"127.0.0.1:{port}", add)
    await service.start()
    try:
        yield fake
    finally:
        await service.stop(grace=0)


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_registers_heartbeats_and_re_registers_when_forgotten() -> None:
    port = free_port()
    probe = FakeProbe(free=111)
    runner = Runner("r-1", probe)
    link = SchedulerLink(runner, f"127.0.0.1:{port}", "10.0.0.5:50063", interval_s=0.05)
    async with scheduler_on(port) as fake, running(link.run()):
        assert await eventually(lambda: len(fake.heartbeats) >= 2)
        reg = fake.registrations[0]
        assert (reg.runner_id, reg.address, [d.id for d in reg.devices]) == ("r-1", "10.0.0.5:50063", ["fake:0"])
        probe.free = 222
        assert await eventually(lambda: fake.heartbeats[-1].devices[0].free_memory_bytes == 222)
        assert list(fake.heartbeats[-1].instance_ids) == []
        fake.forget_next = True
        assert await eventually(lambda: len(fake.registrations) == 2)


async def test_keeps_retrying_until_the_scheduler_appears() -> None:
    port = free_port()
    link = SchedulerLink(Runner("r-2", FakeProbe()), f"127.0.0.1:{port}", "x:1", interval_s=0.05)
    async with running(link.run()) as task:
        await asyncio.sleep(0.6)  # a few failed attempts
        assert not task.done() and not link.registered.is_set()
        async with scheduler_on(port) as fake:
            assert await eventually(lambda: bool(fake.registrations), timeout=15)
            assert await eventually(lambda: bool(fake.heartbeats))


@pytest.mark.skipif(os.name != "posix", reason="stops the server with SIGTERM")
async def test_serve_registers_and_stops_on_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve() pins CUDA in os.environ; monkeypatch puts the test process's values back.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "unchanged")
    sched_port = free_port()
    settings = Settings.from_env(
        {
            "CORRAL_RUNNER_ADDR": "127.0.0.1:0",
            "CORRAL_RUNNER_ADVERTISE_ADDR": "127.0.0.1:7777",
            "CORRAL_SCHEDULER_ADDR": f"127.0.0.1:{sched_port}",
            "CORRAL_HEARTBEAT_INTERVAL": "50ms",
        }
    )
    probe = FakeProbe()
    async with scheduler_on(sched_port) as fake:
        task = asyncio.ensure_future(serve(settings, probe))
        assert await eventually(lambda: bool(fake.heartbeats))
        reg = fake.registrations[0]
        assert reg.address == "127.0.0.1:7777"
        assert reg.runner_id == f"{socket.gethostname()}-cpu-{os.getpid()}"
        assert [d.id for d in reg.devices] == ["fake:0"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # a CPU runner hides every GPU from llama.cpp
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, timeout=10)
    assert probe.closed
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # leave the session loop as we found it
        loop.remove_signal_handler(sig)
