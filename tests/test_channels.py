"""corral.grpc_server.Channels: after the service at an address dies and a new one listens
there (a supervisor restart), a reset channel reaches the new one at once. Real gRPC servers
on a Unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.grpc_server import Channels, GrpcService


async def _check(channels: Channels, address: str) -> int:
    stub = health_pb2_grpc.HealthStub(channels.get(address))
    return int((await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status)


async def test_a_reset_channel_reaches_the_restarted_service_at_once(tmp_path: Path) -> None:
    sock = tmp_path / "svc.sock"
    address = f"unix:{sock}"
    channels = Channels()
    first = GrpcService("first", address, lambda _s: [])
    await first.start()
    try:
        assert await _check(channels, address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await first.server.stop(None)
    for _ in range(100):  # the stopped server unlinks its socket; the next one binds it afresh
        if not sock.exists():
            break
        await asyncio.sleep(0.02)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the channel now backs off
        await _check(channels, address)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    second = GrpcService("second", address, lambda _s: [])
    await second.start()
    try:
        channels.reset(address)
        assert await _check(channels, address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await second.server.stop(None)
        await channels.close()
