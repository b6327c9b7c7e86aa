"""Entry point of the registry service: `python -m services.registry.main`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from corral import logs
from corral.config import Settings, raw
from corral.durations import parse_keep_alive
from corral.grpc_server import GrpcService, run_until_signal
from services.registry.core import Registry
from services.registry.download import TransferSettings
from services.registry.manage import background_verify
from services.registry.redirects import RedirectHosts
from services.registry.responses import ResponseLimits
from services.registry.servicer import register

log = logging.getLogger(__name__)

_FIRST_VERIFY_DELAY = 300.0  # let startup traffic (loads, pulls) go first


def _seconds(name: str) -> float:
    return parse_keep_alive(raw(name), env_style=True)


def redirect_hosts(settings: Settings) -> RedirectHosts:
    """CORRAL_REDIRECT_HOSTS, checked: a bad pattern stops the service rather than being skipped."""
    try:
        hosts = RedirectHosts.parse(settings.redirect_hosts)
    except ValueError as exc:
        raise ValueError(f"CORRAL_REDIRECT_HOSTS: {exc}") from None
    if hosts:
        log.info("blob downloads may be redirected to %s (without the registry's token)", hosts)
    return hosts


async def serve(settings: Settings) -> None:
    """Open the store at settings.models_dir and serve RegistryService until SIGTERM/SIGINT."""
    noprune = raw("CORRAL_NOPRUNE").lower() not in ("", "0", "false", "no", "off")
    parallel = max(1, int(raw("CORRAL_PULL_PARALLEL")))
    transfer = TransferSettings(parallel=parallel, redirect_hosts=redirect_hosts(settings))
    limits = ResponseLimits(int(raw("CORRAL_RESPONSES_MAX")), _seconds("CORRAL_RESPONSES_TTL"))
    registry = await Registry.open(settings.models_dir, transfer, noprune, limits)
    grace = _seconds("CORRAL_BLOB_GRACE")
    log.info("model store at %s", registry.store.root)
    tasks: list[asyncio.Task[None]] = []
    if not noprune:
        removed = await registry.collect_garbage(grace)  # like Ollama's startup prune, with a grace period
        if removed:
            log.info("removed %d unreferenced blobs", len(removed))
    interval = _seconds("CORRAL_VERIFY_INTERVAL")
    if 0 < interval < float("inf"):
        tasks.append(asyncio.create_task(background_verify(registry, interval, _FIRST_VERIFY_DELAY)))
    try:
        service = GrpcService("registry", settings.registry_addr, register(registry, grace))
        await run_until_signal(service)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.close()


def main() -> None:
    settings = Settings.from_env()
    logs.setup("registry")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
