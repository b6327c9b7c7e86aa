"""A runner that speaks the real runner proto over real gRPC but loads nothing:
for testing placement against device inventories this machine does not have."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, runner_pb2, runner_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

GIB = 1 << 30


class FakeRunner(runner_pb2_grpc.RunnerServiceServicer):
    def __init__(self, runner_id: str, devices: list[common_pb2.Device], scheduler_addr: str) -> None:
        self.runner_id = runner_id
        self.devices = devices
        self.scheduler_addr = scheduler_addr
        self.loaded: dict[str, runner_pb2.LoadModelRequest] = {}
        self.loads: list[runner_pb2.LoadModelRequest] = []
        # A slow load: `load_steps` steps of `load_step` seconds; progress stops at `stall_at`.
        self.load_steps, self.load_step, self.stall_at = 1, 0.05, 2.0
        self.loading: dict[str, float] = {}
        self.busy = 1  # active sequences reported for every loaded instance
        self.unloads: list[str] = []
        self.service: GrpcService | None = None
        self._beat: asyncio.Task[None] | None = None

    async def LoadModel(
        self, request: runner_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.LoadModelResponse:
        self.loading[request.instance_id] = 0.0
        try:
            for step in range(1, self.load_steps + 1):
                await asyncio.sleep(self.load_step)
                self.loading[request.instance_id] = min(step / self.load_steps, self.stall_at)
        finally:
            self.loading.pop(request.instance_id, None)
        self.loaded[request.instance_id] = request
        self.loads.append(request)
        mem = runner_pb2.MemoryUsage(weights_bytes=GIB, kv_cache_bytes=GIB // 4, total_bytes=GIB + GIB // 4)
        mem.devices.extend(self._gpu_share(request.options, mem.total_bytes))
        mem.gpu_bytes = sum(d.bytes for d in mem.devices)
        return runner_pb2.LoadModelResponse(
            instance_id=request.instance_id,
            context_length=request.options.num_ctx,
            num_parallel=request.options.num_parallel,
            memory=mem,
        )

    async def UnloadModel(
        self, request: runner_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.UnloadModelResponse:
        self.unloads.append(request.instance_id)
        return runner_pb2.UnloadModelResponse(unloaded=self.loaded.pop(request.instance_id, None) is not None)

    async def GetStatus(
        self, request: runner_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.GetStatusResponse:
        loading = [
            runner_pb2.InstanceStatus(instance_id=i, loading=True, load_progress=p) for i, p in self.loading.items()
        ]
        # A fake generates nothing, so loaded instances show `busy` active sequences (default: busy).
        loaded = [
            runner_pb2.InstanceStatus(instance_id=i, load_progress=1.0, active_sequences=self.busy) for i in self.loaded
        ]
        return runner_pb2.GetStatusResponse(runner_id=self.runner_id, devices=self.devices, instances=loading + loaded)

    def _gpu_share(self, opts: common_pb2.LoadOptions, total: int) -> list[common_pb2.DeviceMemory]:
        """Where the instance's bytes would lie: by tensor_split, on main_gpu, or on the first GPU."""
        gpus = [d for d in self.devices if d.kind == common_pb2.DEVICE_KIND_CUDA]
        if not gpus:
            return []
        shares = list(opts.tensor_split) or [float(d.index == opts.main_gpu) for d in gpus]
        if not any(shares):
            shares = [1.0] + [0.0] * (len(gpus) - 1)
        return [
            common_pb2.DeviceMemory(device_id=d.id, bytes=int(total * share / sum(shares)))
            for d, share in zip(gpus, shares, strict=True)
            if share
        ]

    async def start(self) -> None:
        def register(server: grpc.aio.Server) -> list[str]:
            runner_pb2_grpc.add_RunnerServiceServicer_to_server(self, server)
            return ["corral.v1.RunnerService"]

        self.service = GrpcService(self.runner_id, "127.0.0.1:0", register)
        await self.service.start()
        self.address = f"127.0.0.1:{self.service.port}"
        self._channel = channel(self.scheduler_addr)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)
        await stub.RegisterRunner(
            scheduler_pb2.RegisterRunnerRequest(runner_id=self.runner_id, address=self.address, devices=self.devices)
        )

        async def beat() -> None:
            while True:
                await asyncio.sleep(0.1)
                with contextlib.suppress(grpc.RpcError):
                    await stub.Heartbeat(
                        scheduler_pb2.HeartbeatRequest(
                            runner_id=self.runner_id, devices=self.devices, instance_ids=list(self.loaded)
                        )
                    )

        self._beat = asyncio.create_task(beat())

    async def kill(self) -> None:
        """Die like a crashed process: no goodbye, no more heartbeats."""
        if self._beat:
            self._beat.cancel()
        if self.service:
            await self.service.server.stop(0)
        await self._channel.close()


def cpu_device(total: int = 24 * GIB) -> common_pb2.Device:
    return common_pb2.Device(
        id="cpu", kind=common_pb2.DEVICE_KIND_CPU, name="test cpu", total_memory_bytes=total, free_memory_bytes=total
    )


def gpu_device(index: int, total: int) -> common_pb2.Device:
    return common_pb2.Device(
        id=f"cuda:{index}",
        kind=common_pb2.DEVICE_KIND_CUDA,
        index=index,
        name="test gpu",
        total_memory_bytes=total,
        free_memory_bytes=total,
    )
