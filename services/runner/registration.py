"""Keeps the scheduler informed: register once, then heartbeat; never give up."""

from __future__ import annotations

import asyncio
import logging

import grpc

from corral.grpc_server import channel
from corral.logs import fields
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.runner.core import Runner

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 10.0


class SchedulerLink:
    """Registers the runner and sends heartbeats until cancelled.

    Unreachable scheduler: retry with exponential backoff. Heartbeat answered
    with known=false (the scheduler restarted or timed us out): register again.
    """

    def __init__(self, runner: Runner, scheduler_addr: str, advertise_addr: str, interval_s: float) -> None:
        self.runner = runner
        self.scheduler_addr = scheduler_addr
        self.advertise_addr = advertise_addr
        self.interval_s = max(0.05, interval_s)
        self.registered = asyncio.Event()

    async def run(self) -> None:
        async with channel(self.scheduler_addr) as ch:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            backoff = 0.25
            registered = False
            while True:
                try:
                    devices = [d.to_proto() for d in await asyncio.to_thread(self.runner.devices)]
                    if not registered:
                        resp = await stub.RegisterRunner(
                            scheduler_pb2.RegisterRunnerRequest(
                                runner_id=self.runner.runner_id, address=self.advertise_addr, devices=devices
                            ),
                            timeout=RPC_TIMEOUT_S,
                        )
                        if resp.heartbeat_interval_ms > 0:
                            self.interval_s = resp.heartbeat_interval_ms / 1000
                        registered = True
                        self.registered.set()
                        log.info("registered with the scheduler", extra=fields(runner_id=self.runner.runner_id))
                    else:
                        hb = await stub.Heartbeat(
                            scheduler_pb2.HeartbeatRequest(
                                runner_id=self.runner.runner_id,
                                devices=devices,
                                instance_ids=self.runner.instance_ids(),
                            ),
                            timeout=RPC_TIMEOUT_S,
                        )
                        if not hb.known:
                            log.info("scheduler does not know this runner; registering again")
                            registered = False
                            self.registered.clear()
                            continue
                    backoff = 0.25
                    await asyncio.sleep(self.interval_s)
                except grpc.aio.AioRpcError as err:
                    log.warning(
                        "scheduler unreachable",
                        extra=fields(addr=self.scheduler_addr, code=str(err.code()), retry_s=backoff),
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                except Exception:  # never let the link die: the runner must stay findable
                    log.exception("scheduler link error")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
