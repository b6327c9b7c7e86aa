"""A real OCI registry for tests (Debian's `docker-registry`), a throttling TCP proxy
and a redirecting HTTP front.

`start_oci_registry` runs /usr/bin/docker-registry on a free loopback port with
its storage in a temp directory; given a `TokenServer` it runs with distribution's
token authentication (`auth: token`) and its access log on, so tests can see
which requests were answered 401. `Proxy` forwards a loopback port to it while
counting (and optionally rate-limiting) the bytes sent to the client, so tests
can interrupt a pull mid-blob and see how many bytes a resumed pull fetched.
`Front` is an HTTP(S) server that forwards requests to it but can answer blob
GETs itself instead: with a redirect, or with any status (404, 429, ...).
`BlobHost` stands for the CDN such a redirect points to: a file server on another
loopback address that answers `Range` requests and records every request's headers.
`self_signed_tls` makes a CA and a server certificate for loopback, for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    """TCP proxy 127.0.0.1:<port> -> target, in its own thread; counts (and may throttle) the bytes
    each way."""

    def __init__(self, target: str, rate: float = 0.0, rate_up: float = 0.0) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.rate = rate  # bytes per second downstream; 0 = unlimited
        self.rate_up = rate_up  # bytes per second upstream (a push); 0 = unlimited
        self.bytes_down = 0
        self.bytes_up = 0
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
                    else:
                        self.bytes_up += len(data)
                        if self.rate_up:
                            await asyncio.sleep(len(data) / self.rate_up)
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


@dataclass(frozen=True)
class Received:
    """One request as a test server saw it; header names in lower case."""

    method: str
    path: str
    headers: dict[str, str]
    status: int


_LOOPBACKS = ("127.0.0.1", "127.0.0.2")  # the addresses the server certificate is for


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA certificate (PEM) that clients must trust
    server: ssl.SSLContext  # a server context with a certificate for 127.0.0.1, 127.0.0.2 and localhost


def self_signed_tls(tmp: Path) -> Tls:
    """A fresh CA and a server certificate it signed, for the loopback test servers."""
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
              signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:  # fmt: skip
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            sans = [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(a)) for a in _LOOPBACKS)]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("corral test CA", ca_key, None, ca_key)
    cert = build("corral test server", key, ca, ca_key)
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return Tls(ca_path, server)


def _serve(bind: str, tls: Tls | None, handle: Callable[[BaseHTTPRequestHandler], None]) -> ThreadingHTTPServer:
    """A threading HTTP(S) server on `bind`:<free port> passing every request to `handle`."""

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            handle(self)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = _Server((bind, 0), Handler)
    httpd.tls = tls.server if tls else None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class _Server(ThreadingHTTPServer):
    """With `tls`, each connection's handshake runs in its own request thread: done in accept(),
    one client that connects and then says nothing (a cancelled pull's) would stall every other."""

    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(30)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return  # a failed handshake: nothing to answer
        with conn:
            super().finish_request(conn, client_address)


def _reply(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    if h.command != "HEAD":
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def _received(h: BaseHTTPRequestHandler, status: int) -> Received:
    return Received(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, status)


class Front:
    """An HTTP server on `bind`:<port> that forwards every request to a registry, in its own thread.

    `redirect(path)` may answer a blob GET with a 307 to the URL it returns (None: forward it);
    `answer(path)` may answer it with any reply (None: forward it). A path under `/direct` is
    forwarded with that prefix removed, so a same-host redirect can point there. Every request
    is recorded as (method, path, status), and in `received` with its headers. With `tls` it
    speaks https (and still forwards over plain http).
    """

    DIRECT = "/direct"

    def __init__(self, target: str, bind: str = "127.0.0.1", tls: Tls | None = None) -> None:
        self.target = target
        self.redirect: Callable[[str], str | None] = lambda _path: None
        self.answer: Callable[[str], Reply | None] = lambda _path: None
        self.requests: list[tuple[str, str, int]] = []
        self.received: list[Received] = []  # the same requests, with their headers
        self._client = httpx.Client(base_url=f"http://{target}", timeout=30)
        self._httpd = _serve(bind, tls, self._handle)
        self.host = f"{bind}:{self._httpd.server_address[1]}"

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
        self.received.append(_received(h, status))
        _reply(h, status, headers, body)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._client.close()


_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


class BlobHost:
    """A file server on `bind`:<port> (another loopback address than the registry's), in its own
    thread: what a registry's blob redirects point to, like Ollama's Cloudflare R2 URLs.

    `files(path)` names the file a GET or HEAD of `path` (query included) serves, or None (404);
    a single `Range: bytes=a-b` (or `a-`) is answered 206 with `Content-Range`. `answer(path)` may
    reply instead (a 401, a redirect, ...). Every request is recorded in `received` with its
    headers. With `tls` it speaks https.
    """

    def __init__(self, files: Callable[[str], Path | None], bind: str = "127.0.0.2", tls: Tls | None = None) -> None:
        self.files = files
        self.answer: Callable[[str], Reply | None] = lambda _path: None
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = _serve(bind, tls, self._handle)
        self.port = int(self._httpd.server_address[1])
        self.host = f"{bind}:{self.port}"

    def seen(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        reply = self.answer(h.path) or self._serve_file(h)
        with self._lock:
            self.received.append(_received(h, reply[0]))
        _reply(h, *reply)

    def _serve_file(self, h: BaseHTTPRequestHandler) -> Reply:
        path = self.files(h.path) if h.command in ("GET", "HEAD") else None
        if path is None or not path.is_file():
            return 404, {}, b"not found"
        data = path.read_bytes()
        wanted = h.headers.get("Range")
        if wanted is None:
            return 200, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, data
        m = _RANGE_RE.fullmatch(wanted.strip())
        start = int(m.group(1)) if m else len(data)
        if not m or start >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        end = min(int(m.group(2) or len(data) - 1), len(data) - 1)
        if end < start:
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return 206, headers, data[start : end + 1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
