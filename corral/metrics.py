"""Prometheus exposition for the gRPC services: `GET /metrics` on the address set by
`CORRAL_<SERVICE>_METRICS` (off when empty). Served from the service's own event loop, so
collectors read its state without locks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

_MAX_REQUEST = 8192


def split_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address must be host:port, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        method, _, rest = head[:_MAX_REQUEST].decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        elif path in ("/metrics", "/"):
            status, body, ctype = "200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        else:
            status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(header.encode() + (b"" if method == "HEAD" else body))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(address: str) -> asyncio.Server | None:
    """Start the exposition server when `address` is set; None when metrics are off."""
    if not address:
        return None
    host, port = split_address(address)
    server = await asyncio.start_server(_handle, host, port, limit=_MAX_REQUEST)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
