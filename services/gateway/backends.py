"""gRPC stubs for the services behind the gateway: one channel each, reused."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.grpc_server import Channels
from corral.v1 import registry_pb2_grpc, runner_pb2_grpc, scheduler_pb2_grpc


@dataclass
class Backends:
    registry_addr: str
    scheduler_addr: str
    _channels: Channels = field(default_factory=Channels)

    def _channel(self, address: str) -> grpc.aio.Channel:
        return self._channels.get(address)

    @property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self._channel(self.registry_addr))

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel(self.scheduler_addr))

    async def serving(self, address: str, timeout: float = 2.0) -> bool:
        """Whether the service at `address` answers grpc.health.v1 with SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def runner(self, address: str) -> runner_pb2_grpc.RunnerServiceStub:
        return runner_pb2_grpc.RunnerServiceStub(self._channel(address))

    def reset(self, address: str) -> None:
        """A retry after a runner failed connects afresh (see Channels.reset)."""
        self._channels.reset(address)

    async def close(self) -> None:
        await self._channels.close()
