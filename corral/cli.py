"""The `corral` command."""

from __future__ import annotations

import argparse
import asyncio
import sys

from corral import __version__, logs
from corral.config import Settings

SERVICES = ("gateway", "scheduler", "runner", "registry")


def _run_service(name: str, settings: Settings) -> int:
    logs.setup(name, settings.debug)
    if name == "gateway":
        from services.gateway.main import serve as gateway

        asyncio.run(gateway(settings))
    elif name == "scheduler":
        from services.scheduler.main import serve as scheduler

        asyncio.run(scheduler(settings))
    elif name == "runner":
        from services.runner.main import serve as runner

        asyncio.run(runner(settings))
    elif name == "registry":
        from services.registry.main import serve as registry

        asyncio.run(registry(settings))
    return 0


def _healthcheck(address: str, service: str) -> int:
    """Exit 0 when the gRPC service at `address` reports SERVING (for container healthchecks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as err:
        print(f"unhealthy: {err.code().name}", file=sys.stderr)
        return 1
    ok = resp.status == health_pb2.HealthCheckResponse.SERVING
    print("serving" if ok else "not serving")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral", description="Ollama-compatible LLM server")
    parser.add_argument("-v", "--version", action="version", version=f"corral version {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the whole stack (registry, scheduler, runners, gateway)")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service alone")
    hc = sub.add_parser("healthcheck", help="check a service's gRPC health")
    hc.add_argument("address", help="host:port or unix:/path")
    hc.add_argument("--service", default="", help="service name; empty = the whole server")
    args = parser.parse_args(argv)

    if args.command == "healthcheck":
        return _healthcheck(args.address, args.service)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.command == "serve":
        from corral import supervisor

        logs.setup("supervisor", settings.debug)
        return supervisor.serve(settings)
    try:
        return _run_service(args.command, settings)
    except KeyboardInterrupt:
        return 0
