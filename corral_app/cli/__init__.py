"""The `corral` command: the server (`serve` and the single services) and Ollama's client
commands, which talk to the gateway over REST only (CORRAL_HOST / OLLAMA_HOST)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from corral import __version__, logs
from corral.config import Settings
from corral.grpc_io import use_polling_io
from corral_app.cli.client import Client, CLIError

SERVICES = ("gateway", "scheduler", "runner", "registry")


def _run_service(name: str, settings: Settings) -> int:
    use_polling_io()  # before the service imports grpc
    logs.setup(name)
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


def _parser() -> argparse.ArgumentParser:
    from corral_app.cli import manage, run

    p = argparse.ArgumentParser(prog="corral", description="Large language model runner (Ollama-compatible)")
    p.add_argument("-v", "--version", action="store_true", help="show the client and server versions")
    sub = p.add_subparsers(dest="command")

    def add(name: str, fn: Callable[[Client, argparse.Namespace], int], help: str, aliases: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        sp = sub.add_parser(name, help=help, aliases=list(aliases))
        sp.set_defaults(fn=fn)
        return sp

    sub.add_parser("serve", aliases=["start"], help="start the whole stack (registry, scheduler, runners, gateway)")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service alone")
    hc = sub.add_parser("healthcheck", help="check a service's gRPC health")
    hc.add_argument("address", help="host:port or unix:/path")
    hc.add_argument("--service", default="", help="service name; empty = the whole server")

    r = add("run", run.cmd_run, "run a model")
    r.add_argument("model")
    r.add_argument("prompt", nargs="*")
    r.add_argument("--keepalive", default=None, help="how long to keep the model loaded (e.g. 5m)")
    r.add_argument("--verbose", action="store_true", help="show timings")
    r.add_argument("--insecure", action="store_true", help="use an insecure registry when pulling")
    r.add_argument("--format", default=None, help='response format (e.g. "json")')
    r.add_argument(
        "--think", nargs="?", const="true", default=None, help="enable thinking (true, false, low, medium, high)"
    )
    for name, fn, help_ in (("pull", manage.cmd_pull, "pull a model"), ("push", manage.cmd_push, "push a model")):
        sp = add(name, fn, help_)
        sp.add_argument("model")
        sp.add_argument("--insecure", action="store_true", help="use an insecure registry")
    for name, fn, help_, aliases in (
        ("list", manage.cmd_list, "list models", ("ls",)),
        ("ps", manage.cmd_ps, "list running models", ()),
    ):
        add(name, fn, help_, aliases).add_argument("--json", action="store_true", help="print JSON")
    s = add("show", manage.cmd_show, "show information for a model")
    s.add_argument("model")
    for flag in ("license", "modelfile", "parameters", "template", "system"):
        s.add_argument(f"--{flag}", action="store_true", help=f"show the {flag}")
    s.add_argument("-v", "--verbose", action="store_true", help="show all metadata")
    s.add_argument("--json", action="store_true", help="print JSON")
    c = add("create", manage.cmd_create, "create a model from a Modelfile")
    c.add_argument("model")
    c.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    c.add_argument("-q", "--quantize", default="", help="quantize the weights (e.g. q4_K_M)")
    cp = add("cp", manage.cmd_cp, "copy a model", ("copy",))
    cp.add_argument("source")
    cp.add_argument("destination")
    add("rm", manage.cmd_rm, "remove models", ("delete",)).add_argument("models", nargs="+")
    add("stop", manage.cmd_stop, "stop a running model").add_argument("model")
    return p


def _version() -> int:
    print(f"corral version is {__version__}")
    client = Client()
    try:
        server = client.get("/api/version")["version"]
        print(f"server speaks the Ollama API of version {server}")
    except CLIError:
        print(f"Warning: could not connect to a running corral server at {client.url}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        return _version()
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "healthcheck":
        return _healthcheck(args.address, args.service)
    if hasattr(args, "fn"):
        client = Client()
        try:
            return int(args.fn(client, args))
        except CLIError as err:
            print(f"Error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
        finally:
            client.close()
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.command in ("serve", "start"):
        from corral_app import supervisor

        logs.setup("supervisor")
        return supervisor.serve(settings)
    try:
        return _run_service(args.command, settings)
    except KeyboardInterrupt:
        return 0
