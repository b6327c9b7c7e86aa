"""`corral serve`: the whole stack as supervised child processes.

Internal gRPC traffic goes over Unix sockets in a fresh runtime directory, so two
stacks with different CORRAL_HOST / CORRAL_MODELS never collide. A child that
dies is restarted with backoff; SIGTERM/SIGINT stops every child, and children
get SIGTERM from the kernel if the supervisor itself is killed (no orphans).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from corral.config import Settings
from corral.logs import fields

log = logging.getLogger("corral.supervisor")

_PR_SET_PDEATHSIG = 1
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a child up this long has its backoff reset
STOP_GRACE = 10.0
STARTUP_WAIT = 60.0  # longest the gateway waits for the services behind it to listen


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: best effort


@dataclass
class Child:
    name: str
    service: str
    env: dict[str, str]
    listen: str = ""  # the gRPC address it serves on; "" = the gateway, started once those listen
    command: list[str] = field(default_factory=list)  # default: `python -m corral_app <service>`
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = 1.0
    restart_at: float = 0.0
    restarts: int = field(default=0)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command or [sys.executable, "-m", "corral_app", self.service],
            env=self.env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.started_at = time.monotonic()
        log.info("started", extra=fields(child=self.name, pid=self.proc.pid))


def plan(settings: Settings, runtime_dir: Path, base_env: dict[str, str], runner_device: str = "cpu") -> list[Child]:
    """The children to run and their environment (pure: easy to test).

    `runner_device` is the CORRAL_RUNNER_DEVICE of the one runner (`runner_devices()`).
    """
    sock = {name: f"unix:{runtime_dir / (name + '.sock')}" for name in ("registry", "scheduler", "gateway")}
    env = dict(base_env)
    env.update(
        CORRAL_MODELS=str(settings.models_dir),
        CORRAL_HOST=f"{settings.host}:{settings.port}",
        CORRAL_REGISTRY_ADDR=sock["registry"],
        CORRAL_SCHEDULER_ADDR=sock["scheduler"],
        CORRAL_GATEWAY_HEALTH_ADDR=sock["gateway"],
    )
    tag = runner_device.replace(":", "").replace(",", "-")  # "cpu", "cuda0", "cuda0-1"
    addr = f"unix:{runtime_dir / f'runner-{tag}.sock'}"
    runner_env = dict(
        env, CORRAL_RUNNER_ADDR=addr, CORRAL_RUNNER_ADVERTISE_ADDR=addr, CORRAL_RUNNER_DEVICE=runner_device
    )
    return [
        Child("registry", "registry", env, listen=sock["registry"]),
        Child("scheduler", "scheduler", env, listen=sock["scheduler"]),
        Child(f"runner-{tag}", "runner", runner_env, listen=addr),
        Child("gateway", "gateway", env),
    ]


def accepts(address: str) -> bool:
    """Whether something accepts connections at a gRPC address ("unix:/path" or "host:port")."""
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(address.removeprefix("unix:"))
        else:
            host, _, port = address.rpartition(":")
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0).close()
    except OSError:
        return False
    return True


def runner_devices(gpu_count: int | None = None) -> str:
    """CORRAL_RUNNER_DEVICE for the host's one runner: every NVIDIA GPU ("cuda:0,1,..."),
    else "cpu". `gpu_count` None = the GPUs NVML sees.

    One runner drives all GPUs so the scheduler can place a model on one GPU or
    spread it over several when one is not enough (Ollama spreads by default).
    """
    if gpu_count is None:
        from services.runner.devices import nvidia_gpu_count

        gpu_count = nvidia_gpu_count()
    if gpu_count <= 0:
        return "cpu"
    return "cuda:" + ",".join(str(i) for i in range(gpu_count))


class Supervisor:
    def __init__(self, children: list[Child], drain: float = 0.0) -> None:
        self.children = children
        self.drain = drain  # CORRAL_DRAIN_TIMEOUT: how long the gateway may take to drain
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        while not self.stopping:
            self._tick()
            time.sleep(0.2)
        self.stop_all()
        return 0

    def start(self) -> None:
        """The services first; the gateway once they listen (or STARTUP_WAIT passed), so a
        client that sees the gateway answer never gets "unavailable" from a registry that is
        still opening its socket."""
        services = [c for c in self.children if c.listen]
        for child in services:
            child.start()
        deadline = time.monotonic() + STARTUP_WAIT
        while not self.stopping and time.monotonic() < deadline and not all(accepts(c.listen) for c in services):
            self._tick()
            time.sleep(0.05)
        if self.stopping:
            return
        silent = [c.name for c in services if not accepts(c.listen)]
        if silent:
            log.warning("starting the gateway anyway", extra=fields(not_listening=",".join(silent)))
        for child in self.children:
            if not child.listen:
                child.start()

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if not child.started_at:
                    continue  # not launched yet (the gateway during start-up)
                if now >= child.restart_at:
                    child.restarts += 1
                    log.warning("restarting", extra=fields(child=child.name, restarts=child.restarts))
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if now - child.started_at > STABLE_AFTER:
                child.backoff = 1.0
            log.error("exited", extra=fields(child=child.name, code=code, restart_in=child.backoff))
            child.proc = None
            child.restart_at = now + child.backoff
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)

    def stop_all(self) -> None:
        log.info("stopping")
        # The gateway first, alone: it drains (no new requests; running streams finish within
        # CORRAL_DRAIN_TIMEOUT) while the services those streams need still run. Then the rest.
        gateways = [c for c in self.children if c.service == "gateway"]
        self._stop(gateways, self.drain + STOP_GRACE)
        self._stop([c for c in self.children if c not in gateways], STOP_GRACE)

    def _stop(self, children: list[Child], grace: float) -> None:
        for child in children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("killing", extra=fields(child=child.name))
                child.proc.kill()
                child.proc.wait()


def serve(settings: Settings) -> int:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    owned = not settings.runtime_dir
    runtime_dir = Path(settings.runtime_dir or tempfile.mkdtemp(prefix="corral-"))
    runtime_dir.mkdir(parents=True, exist_ok=True)
    children = plan(settings, runtime_dir, dict(os.environ), runner_devices())
    log.info(
        "corral serve",
        extra=fields(
            host=f"{settings.host}:{settings.port}", models=str(settings.models_dir), runtime=str(runtime_dir)
        ),
    )
    try:
        return Supervisor(children, drain=settings.drain_timeout_seconds).run()
    finally:
        if owned:
            shutil.rmtree(runtime_dir, ignore_errors=True)
