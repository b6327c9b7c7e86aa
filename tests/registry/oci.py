"""A real OCI registry for tests (Debian's `docker-registry`) and a throttling TCP proxy.

`start_oci_registry` runs /usr/bin/docker-registry on a free loopback port with
its storage in a temp directory. `Proxy` forwards a loopback port to it while
counting (and optionally rate-limiting) the bytes sent to the client, so tests
can interrupt a pull mid-blob and see how many bytes a resumed pull fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.stack import free_port

BINARY = "/usr/bin/docker-registry"

_CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class OciRegistry:
    host: str  # "127.0.0.1:<port>"
    root: Path
    proc: subprocess.Popen[bytes]

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (distribution's filesystem layout)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def have_registry() -> bool:
    return shutil.which(BINARY) is not None


def start_oci_registry(tmp: Path) -> OciRegistry:
    if not have_registry():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    root = tmp / "oci"
    root.mkdir(parents=True, exist_ok=True)
    config = tmp / "oci.yml"
    config.write_text(_CONFIG.format(root=root, port=port))
    log = (tmp / "oci.log").open("wb")
    proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=log)
    reg = OciRegistry(f"127.0.0.1:{port}", root, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(tmp / 'oci.log').read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{reg.host}/v2/", timeout=1).status_code == 200:
                return reg
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError("docker-registry did not start")


class Proxy:
    """TCP proxy 127.0.0.1:<port> -> target, in its own thread; counts bytes sent downstream."""

    def __init__(self, target: str, rate: float = 0.0) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.rate = rate  # bytes per second downstream; 0 = unlimited
        self.bytes_down = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(64 << 10):
                    if count:
                        self.bytes_down += len(data)
                        if self.rate:
                            await asyncio.sleep(len(data) / self.rate)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
