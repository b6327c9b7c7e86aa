"""SchedulerService: translation between protobuf and the Scheduler core."""

from __future__ import annotations

import math

import grpc
from google.protobuf import timestamp_pb2

from corral.durations import keep_alive_seconds
from corral.errors import CorralError
from corral.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.scheduler import placement
from services.scheduler.core import Scheduler
from services.scheduler.inventory import Device

# Ollama shows "forever" as a date far in the future; keep it inside Timestamp's range.
FOREVER_SECONDS = 10_000_000_000  # year 2286


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, core: Scheduler) -> None:
        self.core = core

    async def RegisterRunner(
        self, request: scheduler_pb2.RegisterRunnerRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RegisterRunnerResponse:
        devices = [Device.from_proto(d) for d in request.devices]
        if not devices:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "a runner must register at least one device")
        await self.core.register(request.runner_id, request.address, devices)
        return scheduler_pb2.RegisterRunnerResponse(
            heartbeat_interval_ms=int(self.core.config.heartbeat_interval * 1000)
        )

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.HeartbeatResponse:
        devices = [Device.from_proto(d) for d in request.devices]
        known = await self.core.heartbeat(request.runner_id, devices, request.instance_ids)
        return scheduler_pb2.HeartbeatResponse(known=known)

    async def AcquireModel(
        self, request: scheduler_pb2.AcquireModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.AcquireModelResponse:
        keep_alive = request.keep_alive_seconds if request.HasField("keep_alive_seconds") else None
        if keep_alive is not None:
            try:
                keep_alive = keep_alive_seconds(keep_alive)
            except ValueError as exc:
                raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, str(exc)) from None
        lease = await self.core.acquire(request.model, request.options, keep_alive)
        return scheduler_pb2.AcquireModelResponse(
            lease_id=lease.id,
            runner_address=lease.runner_address,
            instance_id=lease.instance_id,
            load_duration_ns=lease.load_duration_ns,
            context_length=lease.context_length,
        )

    async def ReleaseModel(
        self, request: scheduler_pb2.ReleaseModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseModelResponse:
        await self.core.release(request.lease_id, request.runner_failed)
        return scheduler_pb2.ReleaseModelResponse()

    async def UnloadModel(
        self, request: scheduler_pb2.SchedulerUnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SchedulerUnloadModelResponse:
        return scheduler_pb2.SchedulerUnloadModelResponse(
            unloading=await self.core.unload_model(request.model_digest, request.manifest_digest)
        )

    async def ListLoadedModels(
        self, request: scheduler_pb2.ListLoadedModelsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListLoadedModelsResponse:
        out = scheduler_pb2.ListLoadedModelsResponse()
        for inst in self.core.loaded():
            m = out.models.add(
                name=inst.spec.name,
                manifest_digest=inst.spec.manifest_digest,
                size_bytes=inst.memory,
                size_vram_bytes=inst.size_vram_bytes,
                context_length=inst.context_length or inst.key.num_ctx,
                runner_id=inst.runner_id,
                active_leases=inst.leases,
                num_parallel=inst.key.num_parallel,
                also_serving=sorted(inst.also_serves),
                devices=[common_pb2.DeviceMemory(device_id=d, bytes=b) for d, b in inst.measured.items()],
            )
            m.details.CopyFrom(inst.spec.details)
            expires = inst.expires_at
            if math.isinf(expires):  # busy or forever: show when it would expire if idle now
                expires = (
                    self.core.clock.time() + inst.keep_alive if not math.isinf(inst.keep_alive) else FOREVER_SECONDS
                )
            expires = min(expires, FOREVER_SECONDS)
            m.expires_at.CopyFrom(timestamp_pb2.Timestamp(seconds=int(expires), nanos=int((expires % 1) * 1e9)))
        return out

    async def GetInfo(
        self, request: scheduler_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetInfoResponse:
        core = self.core
        out = scheduler_pb2.GetInfoResponse(
            max_loaded_models=core.max_loaded_models(),
            max_queue=core.config.max_queue,
            num_parallel=core.config.num_parallel,
            default_context_length=core.default_num_ctx(),
            default_keep_alive_seconds=-1.0 if math.isinf(core.config.keep_alive) else core.config.keep_alive,
            queued_requests=core.pending,
        )
        for r in core.inv.runners.values():
            instances = core.inv.on_runner(r.id)
            out.runners.add(
                runner_id=r.id,
                address=r.address,
                loaded_models=len(instances),
                devices=[
                    scheduler_pb2.DeviceUsage(
                        device=d.to_proto(),
                        allocated_bytes=sum(i.device_bytes(d.id) for i in instances),
                        available_bytes=placement.available(core.inv, r, d.id),
                    )
                    for d in r.devices
                ],
            )
        return out
