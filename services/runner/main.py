"""Runner process: probe the device, serve RunnerService, stay registered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from corral.config import Settings
from corral.grpc_server import GrpcService, run_until_signal
from services.runner.core import Runner
from services.runner.devices import DeviceProbe, probe_for
from services.runner.native import DEFAULT_NUM_CTX
from services.runner.registration import SchedulerLink
from services.runner.servicer import LoadDefaults, RunnerServicer, register

log = logging.getLogger(__name__)


def load_defaults(settings: Settings) -> LoadDefaults:
    return LoadDefaults(
        num_ctx=settings.context_length if settings.context_length > 0 else DEFAULT_NUM_CTX,
        num_parallel=max(1, settings.num_parallel),
        num_thread=settings.num_thread,
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type or "f16",
    )


async def serve(settings: Settings, probe: DeviceProbe | None = None) -> None:
    probe = probe or probe_for(settings.runner_device)
    device = probe.probe()
    runner_id = settings.runner_id or f"{socket.gethostname()}-{device.id}-{os.getpid()}"
    runner = Runner(runner_id, probe)
    service = GrpcService("runner", settings.runner_addr, register(RunnerServicer(runner, load_defaults(settings))))
    link = SchedulerLink(
        runner,
        settings.scheduler_addr,
        settings.runner_advertise_addr or settings.runner_addr,
        settings.heartbeat_interval_seconds,
    )
    tasks: list[asyncio.Task[None]] = []

    async def on_start() -> None:
        log.info("runner %s on %s (%s)", runner_id, device.id, device.name)
        tasks.append(asyncio.create_task(link.run()))

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.unload_all()
        probe.close()

    await run_until_signal(service, on_start, on_stop)
