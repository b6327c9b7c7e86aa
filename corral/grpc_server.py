"""Run a gRPC service the same way everywhere: health, reflection, errors, SIGTERM.

Servicers raise `CorralError`; the interceptor here turns it into a rich gRPC
status, so servicers stay thin translators between protobuf and a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from corral import metrics, telemetry
from corral.config import raw
from corral.errors import CorralError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    # Corral's services restart in about a second: reconnect soon after a peer comes back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Own connections per channel: a channel made by Channels.reset must not share the
    # process-wide subchannel (and its backoff) of the channel it replaces.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def channel(address: str) -> grpc.aio.Channel:
    """A long-lived insecure channel to another Corral service; calls carry the trace context
    and request id."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=telemetry.client_interceptors())


# How long calls still on a replaced channel (a load, a stream) may run before it closes.
RETIRED_CHANNEL_GRACE_S = 3600.0


class Channels:
    """One long-lived channel per address. `reset` replaces an address's channel: after the
    service there died, its channel sits in reconnect backoff and fails calls at once until
    its next attempt, while a supervisor restarts the service at the same address within a
    second or so; a fresh channel connects now. The old one closes once its calls end."""

    def __init__(self) -> None:
        self._open: dict[str, grpc.aio.Channel] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def get(self, address: str) -> grpc.aio.Channel:
        if address not in self._open:
            self._open[address] = channel(address)
        return self._open[address]

    def reset(self, address: str) -> None:
        old = self._open.pop(address, None)
        if old is not None:
            task = asyncio.ensure_future(old.close(grace=RETIRED_CHANNEL_GRACE_S))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for ch in self._open.values():
            await ch.close()
        self._open.clear()


async def _abort(context: grpc.aio.ServicerContext, err: CorralError) -> None:
    await context.abort_with_status(err.to_status())


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps CorralError raised by a handler to a gRPC status with ErrorInfo."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except CorralError as err:
                    await _abort(context, err)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner_us(request, context):
                        yield item
                except CorralError as err:
                    await _abort(context, err)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_su(request_iterator, context)
                except CorralError as err:
                    await _abort(context, err)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        return handler


class GrpcService:
    """A gRPC server with health, reflection and graceful shutdown.

    `register(server)` adds the servicers and returns their full service names.
    """

    def __init__(
        self,
        name: str,
        address: str,
        register: Callable[[grpc.aio.Server], Iterable[str]],
    ) -> None:
        self.name = name
        self.address = address
        self.server = grpc.aio.server(
            interceptors=[telemetry.ServerInterceptor(), ErrorInterceptor()], options=SERVER_OPTIONS
        )
        self.service_names = list(register(self.server))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{name}: cannot listen on {address}")

    async def start(self) -> None:
        await self.server.start()
        for svc in ["", *self.service_names]:
            await self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s listening on %s", self.name, self.address)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def run_until_signal(
    service: GrpcService,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Tracing and the metrics endpoint
    (CORRAL_<SERVICE>_METRICS) are set up here, the same way for every service."""
    telemetry.setup_tracing(service.name)
    exposition = await metrics.serve(raw(f"CORRAL_{service.name.upper()}_METRICS"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await service.start()
    if on_start is not None:
        await on_start()
    await stop.wait()
    log.info("%s stopping", service.name)
    if on_stop is not None:
        await on_stop()
    await service.stop()
    if exposition is not None:
        exposition.close()
