"""The CLI's REST client: the gateway at CORRAL_HOST (alias OLLAMA_HOST), nothing else."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import httpx

from corral.config import parse_host, raw


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def base_url() -> str:
    value = raw("CORRAL_HOST")
    host, port = parse_host(value)
    scheme = "https" if value.startswith("https://") else "http"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening on all interfaces: connect over loopback
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class Client:
    def __init__(self, url: str | None = None, timeout: float | None = None) -> None:
        self.url = url or base_url()
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout or 30, read=None))

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, body: Any = None, stream: bool = False) -> httpx.Response:
        try:
            req = self.http.build_request(method, path, json=body)
            resp = self.http.send(req, stream=stream)
        except httpx.ConnectError:
            raise CLIError(f"could not connect to corral server at {self.url}, is it running?") from None
        if resp.status_code >= 400:
            if stream:
                resp.read()
            raise CLIError(_error_text(resp))
        return resp

    def heartbeat(self) -> None:
        self._send("HEAD", "/")

    def get(self, path: str) -> Any:
        return self._send("GET", path).json()

    def post(self, path: str, body: Any) -> Any:
        resp = self._send("POST", path, body)
        return resp.json() if resp.content else None

    def delete(self, path: str, body: Any) -> None:
        self._send("DELETE", path, body)

    def stream(self, path: str, body: Any) -> Generator[dict[str, Any], None, None]:
        """NDJSON objects of a streaming endpoint; an `error` line raises CLIError."""
        resp = self._send("POST", path, body, stream=True)
        try:
            for line in resp.iter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    raise CLIError(str(obj["error"]))
                yield obj
        finally:
            resp.close()

    def upload_blob(self, digest: str, path: str) -> None:
        if self.http.head(f"/api/blobs/{digest}").status_code == 200:
            return
        with open(path, "rb") as f:
            resp = self.http.post(f"/api/blobs/{digest}", content=f, timeout=None)
        if resp.status_code >= 400:
            raise CLIError(_error_text(resp))


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return resp.text.strip()
