"""Entry point of the gateway: the REST server plus a gRPC health endpoint."""

from __future__ import annotations

import asyncio
import logging
import math
import socket

import uvicorn

from corral import telemetry
from corral.config import Settings, raw
from corral.grpc_server import GrpcService
from corral.logs import fields
from services.gateway.app import create_app
from services.gateway.backends import Backends
from services.gateway.security import Security

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """uvicorn's shutdown already drains: it closes the listening socket (new connections
    are refused), closes idle keep-alive connections, lets running requests and streams
    finish for `timeout_graceful_shutdown`, then cancels them. Before that, health says
    NOT_SERVING so a load balancer stops routing here."""

    def __init__(self, config: uvicorn.Config, health: GrpcService) -> None:
        super().__init__(config)
        self._health = health

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("draining", extra=fields(timeout_s=self.config.timeout_graceful_shutdown))
        await self._health.health.enter_graceful_shutdown()
        await super().shutdown(sockets)


async def serve(settings: Settings) -> None:
    telemetry.setup_tracing("gateway")
    app = create_app(Backends(settings.registry_addr, settings.scheduler_addr))
    guarded = Security(app, origins=raw("CORRAL_ORIGINS"), api_key=raw("CORRAL_API_KEY"), bound_host=settings.host)
    config = uvicorn.Config(
        guarded,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(max(0.0, settings.drain_timeout_seconds)),
    )
    # The gateway speaks REST to clients; it also answers grpc.health.v1 like every service.
    health = GrpcService("gateway", settings.gateway_health_addr, lambda _server: [])
    server = _DrainingServer(config, health)
    await health.start()
    try:
        await server.serve()  # returns on SIGTERM/SIGINT
    finally:
        await health.stop()
    if not server.started:
        raise SystemExit(f"gateway: cannot listen on {settings.host}:{settings.port}")


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
