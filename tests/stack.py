"""Start and stop the whole stack the way users do (`corral serve`), for tests and benchmarks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    url: str
    proc: subprocess.Popen[bytes]
    runtime_dir: Path
    models_dir: Path
    log_path: Path

    def socket(self, name: str) -> str:
        return f"unix:{self.runtime_dir / (name + '.sock')}"

    def child(self, service: str) -> psutil.Process | None:
        """The live child process running `service` (a killed one is a zombie until reaped)."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and child.cmdline()[-1:] == [service]:
                    return child
            except psutil.Error:
                continue
        return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_stack(tmp: Path, **extra_env: str) -> Stack:
    port = free_port()
    runtime = tmp / "rt"
    models = tmp / "models"
    log_path = tmp / "stack.log"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        CORRAL_HOST=f"127.0.0.1:{port}",
        CORRAL_MODELS=str(models),
        CORRAL_RUNTIME_DIR=str(runtime),
        CORRAL_HEARTBEAT_INTERVAL="1s",
        CORRAL_RUNNER_TIMEOUT="5s",
    )
    env.pop("GGML_CPU_TILED_MM", None)  # set by tests/conftest.py for in-process runners only
    env.pop("OLLAMA_HOST", None)
    env.pop("OLLAMA_MODELS", None)
    env.update(extra_env)  # may override the defaults above (e.g. CORRAL_MODELS)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "corral_app", "serve"], env=env, stdout=log, stderr=log)
    stack = Stack(f"http://127.0.0.1:{port}", proc, runtime, models, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"corral serve exited early:\n{stack.logs()}")
        try:
            if httpx.get(stack.url + "/", timeout=1).status_code == 200:
                return stack
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_stack(stack)
    raise RuntimeError(f"gateway did not come up:\n{stack.logs()}")


def stop_stack(stack: Stack) -> None:
    stack.proc.send_signal(signal.SIGTERM)
    try:
        stack.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        stack.proc.wait()


def create_model(url: str, name: str, gguf: Path) -> list[dict[str, object]]:
    """Upload a GGUF through /api/blobs and create a model from it through /api/create."""
    with gguf.open("rb") as f:
        digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    with httpx.Client(base_url=url, timeout=300) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with gguf.open("rb") as f:
                resp = client.post(f"/api/blobs/{digest}", content=f)
            assert resp.status_code == 201, resp.text
        resp = client.post("/api/create", json={"model": name, "files": {gguf.name: digest}})
        assert resp.status_code == 200, resp.text
        return [json.loads(line) for line in resp.text.splitlines()]
