"""How the scheduler talks to runners. An interface, so tests can inject fakes
that still speak the real runner proto."""

from __future__ import annotations

import contextlib
from typing import Protocol

import grpc

from corral.errors import from_rpc_error
from corral.grpc_server import Channels
from corral.v1 import runner_pb2, runner_pb2_grpc


class RunnerClient(Protocol):
    async def load(
        self, address: str, request: runner_pb2.LoadModelRequest, timeout: float | None
    ) -> runner_pb2.LoadModelResponse: ...

    async def unload(self, address: str, instance_id: str) -> None: ...

    async def status(self, address: str) -> runner_pb2.GetStatusResponse | None:
        """The runner's status, or None when it does not answer."""
        ...

    async def alive(self, address: str) -> bool: ...

    def reset(self, address: str) -> None:
        """A new runner registered at `address`: later calls must not inherit the connection
        state left by the one that was there before."""
        ...

    async def close(self) -> None: ...


class GrpcRunnerClient:
    """RunnerClient over gRPC, one long-lived channel per runner address."""

    def __init__(self) -> None:
        self._channels = Channels()

    def _stub(self, address: str) -> runner_pb2_grpc.RunnerServiceStub:
        return runner_pb2_grpc.RunnerServiceStub(self._channels.get(address))

    async def load(
        self, address: str, request: runner_pb2.LoadModelRequest, timeout: float | None
    ) -> runner_pb2.LoadModelResponse:
        try:
            return await self._stub(address).LoadModel(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def unload(self, address: str, instance_id: str) -> None:
        # A runner that is gone has unloaded everything already.
        with contextlib.suppress(grpc.RpcError):
            await self._stub(address).UnloadModel(runner_pb2.UnloadModelRequest(instance_id=instance_id), timeout=30)

    async def status(self, address: str) -> runner_pb2.GetStatusResponse | None:
        try:
            return await self._stub(address).GetStatus(runner_pb2.GetStatusRequest(), timeout=3)
        except grpc.RpcError:
            return None

    async def alive(self, address: str) -> bool:
        return await self.status(address) is not None

    def reset(self, address: str) -> None:
        self._channels.reset(address)

    async def close(self) -> None:
        await self._channels.close()
