"""CORS, Host-header and API-key checks as pure ASGI middleware (no buffering, so
streams pass straight through).

Like Ollama: allowed origins are CORRAL_ORIGINS plus localhost/127.0.0.1/0.0.0.0 and
app-style schemes; when bound to loopback, the Host header must be a local name or a
private/loopback address (DNS-rebinding defence). With CORRAL_API_KEY set, every
request except `GET /`, `HEAD /`, the chat page's static files (GET/HEAD under /ui)
and preflights needs `Authorization: Bearer <key>` (or `x-api-key`, which the Anthropic
client sends). As in gin-contrib/cors (Ollama's), a request whose Origin is the gateway's
own (`http://` or `https://` + Host: a page it served calling fetch) is not a CORS request.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_ORIGINS = [
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]

ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, x-api-key, anthropic-version, "
    "x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, "
    "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, "
    "x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)
OPEN_PATHS = {"/"}
STATIC_PREFIX = "/ui"  # the chat page's files are public; the API calls it makes carry the key


def is_open(method: str, path: str) -> bool:
    if path in OPEN_PATHS:
        return True
    return method in ("GET", "HEAD") and (path == STATIC_PREFIX or path.startswith(STATIC_PREFIX + "/"))


def parse_origins(value: str) -> list[str]:
    return [o.strip() for o in value.split(",") if o.strip()] + DEFAULT_ORIGINS


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    return any(p == "*" or fnmatch.fnmatchcase(origin, p) for p in patterns)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def host_allowed(host_header: str) -> bool:
    host = host_header
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    if not host or host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == socket.gethostname().lower()
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


class Security:
    def __init__(self, app: ASGIApp, origins: str = "", api_key: str = "", bound_host: str = "127.0.0.1") -> None:
        self.app = app
        self.origins = parse_origins(origins)
        self.api_key = api_key
        self.check_host = is_loopback(bound_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.check_host and not host_allowed(headers.get("host", "")):
            await _plain(send, 403, b"")
            return
        origin = headers.get("origin", "")
        if origin in (f"http://{headers.get('host', '')}", f"https://{headers.get('host', '')}"):
            origin = ""  # same origin: a page this gateway served (gin-contrib/cors does the same)
        allowed = bool(origin) and origin_allowed(origin, self.origins)
        cors: list[tuple[bytes, bytes]] = []
        if allowed:
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            ]
        method = scope.get("method", "GET")
        if method == "OPTIONS" and "access-control-request-method" in headers:
            if origin and not allowed:
                await _plain(send, 403, b"")
                return
            extra = [
                (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", b"43200"),
            ]
            await _plain(send, 204, b"", cors + extra)
            return
        if origin and not allowed:
            await _plain(send, 403, b"")
            return
        if self.api_key and not is_open(method, scope.get("path", "")) and not self._authorized(headers):
            body = json.dumps({"error": "unauthorized", "code": "unauthorized"}).encode()
            await _plain(send, 401, body, [*cors, (b"www-authenticate", b"Bearer")], b"application/json")
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + cors
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return hmac.compare_digest(token.encode(), self.api_key.encode())


async def _plain(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, ctype: bytes = b"text/plain"
) -> None:
    hdrs = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
