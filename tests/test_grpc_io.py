"""gRPC's polling I/O (corral/grpc_io.py): set for the services and, through tests/__init__.py,
for this process, whose in-process servers and channels then run as the services' do."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from corral.grpc_io import POLLING_IO, use_polling_io


def test_an_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    use_polling_io()
    assert os.environ["GRPC_EXPERIMENTS"] == POLLING_IO
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")  # gRPC's own default, on purpose
    use_polling_io()
    assert os.environ["GRPC_EXPERIMENTS"] == ""


def _event_engine_wakeups() -> int:
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "event_engine":
                continue
            status = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended
            continue
        total += int(next(line for line in status if line.startswith("voluntary_ctxt_switches")).split()[1])
    return total


async def test_calls_do_not_hop_through_event_engine_threads(tmp_path: Path) -> None:
    """With gRPC's EventEngine I/O each call woke its threads about 9 times (grpcio 1.85)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    address = f"unix:{tmp_path / 'io.sock'}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest())
            before = _event_engine_wakeups()
            for _ in range(200):
                await stub.Check(health_pb2.HealthCheckRequest())
            per_call = (_event_engine_wakeups() - before) / 200
    finally:
        await server.stop(0)
    assert per_call < 1, f"{per_call:.1f} event_engine wake-ups per call: polling I/O is not in effect"
