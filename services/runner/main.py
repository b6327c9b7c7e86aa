"""Runner process: probe the devices, pin CUDA to them, serve RunnerService, stay registered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from corral.config import Settings
from corral.grpc_server import GrpcService, run_until_signal
from corral.logs import fields
from services.runner import metrics
from services.runner.blobs import BlobCache, RegistryBlobReader
from services.runner.core import Runner
from services.runner.devices import DeviceInfo, DeviceProbe, cuda_env, device_tag, probe_for
from services.runner.native import DEFAULT_NUM_CTX, use_batch_invariant_kernels
from services.runner.promptcache import PromptCache
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


def pin_cuda(devices: list[DeviceInfo]) -> None:
    """Makes CUDA ordinal k the runner's k-th device for this process.

    Must run before llama.cpp first touches CUDA (native._backend_init, at the
    first load): the CUDA runtime reads these variables once, when it starts.
    """
    env = cuda_env(devices)
    os.environ.update(env)
    log.info("CUDA devices pinned", extra=fields(**env))


async def serve(settings: Settings, probe: DeviceProbe | None = None) -> None:
    if settings.batch_invariant:
        use_batch_invariant_kernels()
    probe = probe or probe_for(settings.runner_device)
    try:
        devices = probe.probe()
        pin_cuda(devices)
    except BaseException:
        probe.close()
        raise
    runner_id = settings.runner_id or f"{socket.gethostname()}-{device_tag(devices)}-{os.getpid()}"
    reader = RegistryBlobReader(settings.registry_addr)
    cache = PromptCache(settings.cache_ram_mib << 20)
    runner = Runner(runner_id, probe, BlobCache(settings.runner_cache, reader), cache)
    metrics.INSTANCES.instances = runner.gauges
    service = GrpcService("runner", settings.runner_addr, register(RunnerServicer(runner, load_defaults(settings))))
    link = SchedulerLink(
        runner,
        settings.scheduler_addr,
        settings.runner_advertise_addr or settings.runner_addr,
        settings.heartbeat_interval_seconds,
    )
    tasks: list[asyncio.Task[None]] = []

    async def on_start() -> None:
        log.info("runner %s on %s", runner_id, ", ".join(f"{d.id} ({d.name})" for d in devices))
        tasks.append(asyncio.create_task(link.run()))

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.unload_all()
        await reader.close()
        probe.close()

    await run_until_signal(service, on_start, on_stop)
