"""A real OCI registry for tests (Debian's `docker-registry`), a throttling TCP proxy
and a redirecting HTTP front.

`start_oci_registry` runs /usr/bin/docker-registry on a free loopback port with
its storage in a temp directory; given a `TokenServer` it runs with distribution's
token authentication (`auth: token`) and its access log on, so tests can see
which requests were answered 401. `Proxy` forwards a loopback port to it while
counting (and optionally rate-limiting) the bytes sent to the client, so tests
can interrupt a pull mid-blob and see how many bytes a resumed pull fetched.
`Front` is an HTTP server that forwards requests to it but can answer blob
GETs itself instead: with a redirect, or with any status (404, 429, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.stack import free_port

if TYPE_CHECKING:
    from tests.registry.token_server import TokenServer

BINARY = "/usr/bin/docker-registry"

_CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: {no_access_log}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""

_TOKEN_AUTH = """auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""

# Go's combined log format: `host - user [date] "METHOD /path HTTP/1.1" status size ...`
_ACCESS_RE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) ')


@dataclass
class OciRegistry:
    host: str  # "127.0.0.1:<port>"
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def access_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far (only with the access log on)."""
        text = self.log.read_text(errors="replace")
        return [(m, p, int(s)) for m, p, s in _ACCESS_RE.findall(text)]

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


def start_oci_registry(tmp: Path, token: TokenServer | None = None) -> OciRegistry:
    """docker-registry on loopback; with `token`, behind its token authentication."""
    if not have_registry():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    root = tmp / "oci"
    root.mkdir(parents=True, exist_ok=True)
    config = tmp / "oci.yml"
    text = _CONFIG.format(root=root, port=port, no_access_log="false" if token else "true")
    if token is not None:
        text += _TOKEN_AUTH.format(realm=token.realm, service=token.service, issuer=token.issuer, cert=token.cert_path)
    config.write_text(text)
    log_path = tmp / "oci.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=log)
    reg = OciRegistry(f"127.0.0.1:{port}", root, proc, log_path)
    ready = 401 if token else 200  # with token auth even the base endpoint wants a token
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{reg.host}/v2/", timeout=1).status_code == ready:
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


# (status, headers, body) of an answer the front gives itself.
Reply = tuple[int, dict[str, str], bytes]


class Front:
    """An HTTP server on `bind`:<port> that forwards every request to a registry, in its own thread.

    `redirect(path)` may answer a blob GET with a 307 to the URL it returns (None: forward it);
    `answer(path)` may answer it with any reply (None: forward it). A path under `/direct` is
    forwarded with that prefix removed, so a same-host redirect can point there. Every request
    is recorded as (method, path, status).
    """

    DIRECT = "/direct"

    def __init__(self, target: str, bind: str = "127.0.0.1") -> None:
        self.target = target
        self.redirect: Callable[[str], str | None] = lambda _path: None
        self.answer: Callable[[str], Reply | None] = lambda _path: None
        self.requests: list[tuple[str, str, int]] = []
        self._client = httpx.Client(base_url=f"http://{target}", timeout=30)
        front = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                front._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((bind, 0), Handler)
        self.host = f"{bind}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path, method = h.path, h.command
        redirectable = method == "GET" and "/blobs/sha256:" in path and not path.startswith(self.DIRECT)
        location = self.redirect(path) if redirectable else None
        reply = self.answer(path) if redirectable and location is None else None
        if location is not None:
            status, headers, body = 307, {"Location": location}, b""
        elif reply is not None:
            status, headers, body = reply
        else:
            length = int(h.headers.get("Content-Length") or 0)
            content = h.rfile.read(length) if length else None
            forward = {k: v for k, v in h.headers.items() if k.lower() not in ("content-length", "connection")}
            resp = self._client.request(method, path.removeprefix(self.DIRECT), headers=forward, content=content)
            status, body = resp.status_code, resp.content
            skip = ("content-length", "connection", "transfer-encoding", "content-encoding")
            headers = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
            if method == "HEAD":
                headers["Content-Length"] = resp.headers.get("content-length", "0")
        self.requests.append((method, path, status))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if method != "HEAD":
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self._client.close()
