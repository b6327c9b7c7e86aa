"""Entry point of the registry service: `python -m services.registry.main`."""

from __future__ import annotations

import asyncio
import logging

from corral import logs
from corral.config import Settings
from corral.grpc_server import GrpcService, run_until_signal
from services.registry.core import Registry
from services.registry.servicer import register

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    """Open the store at settings.models_dir and serve RegistryService until SIGTERM/SIGINT."""
    registry = await Registry.open(settings.models_dir)
    log.info("model store at %s", registry.store.root)
    try:
        service = GrpcService("registry", settings.registry_addr, register(registry))
        await run_until_signal(service)
    finally:
        await registry.close()


def main() -> None:
    settings = Settings.from_env()
    logs.setup("registry", settings.debug)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
