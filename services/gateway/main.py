"""Entry point of the gateway: the REST server plus a gRPC health endpoint."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from corral import telemetry
from corral.config import Settings, raw
from corral.grpc_server import GrpcService
from services.gateway.app import create_app
from services.gateway.backends import Backends
from services.gateway.security import Security

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    telemetry.setup_tracing("gateway")
    app = create_app(Backends(settings.registry_addr, settings.scheduler_addr))
    guarded = Security(app, origins=raw("CORRAL_ORIGINS"), api_key=raw("CORRAL_API_KEY"), bound_host=settings.host)
    config = uvicorn.Config(
        guarded, host=settings.host, port=settings.port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    # The gateway speaks REST to clients; it also answers grpc.health.v1 like every service.
    health = GrpcService("gateway", settings.gateway_health_addr, lambda _server: [])
    await health.start()
    try:
        await server.serve()  # returns on SIGTERM/SIGINT
    finally:
        await health.stop()
    if not server.started:
        raise SystemExit(f"gateway: cannot listen on {settings.host}:{settings.port}")


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
