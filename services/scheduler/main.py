"""Entry point of the scheduler service."""

from __future__ import annotations

from corral.config import Settings
from corral.grpc_server import GrpcService, run_until_signal
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler import metrics
from services.scheduler.core import Scheduler, SchedulerConfig
from services.scheduler.runners import GrpcRunnerClient
from services.scheduler.servicer import SchedulerServicer


def config_from(settings: Settings) -> SchedulerConfig:
    return SchedulerConfig(
        keep_alive=settings.keep_alive_seconds,
        context_length=settings.context_length,
        num_parallel=settings.num_parallel,
        max_loaded_models=settings.max_loaded_models,
        max_queue=settings.max_queue,
        sched_spread=settings.sched_spread,
        load_timeout=settings.load_timeout_seconds,
        runner_timeout=settings.runner_timeout_seconds,
        heartbeat_interval=settings.heartbeat_interval_seconds,
        kv_cache_type=settings.kv_cache_type,
        flash_attention=settings.flash_attention,
    )


def build(settings: Settings, address: str | None = None) -> tuple[GrpcService, Scheduler]:
    core = Scheduler(config_from(settings), GrpcRunnerClient())
    metrics.INVENTORY.core = core
    servicer = SchedulerServicer(core)

    def register(server: object) -> list[str]:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
        return [scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name]

    return GrpcService("scheduler", address or settings.scheduler_addr, register), core


async def serve(settings: Settings) -> None:
    service, core = build(settings)
    await run_until_signal(service, on_start=core.start, on_stop=core.stop)
