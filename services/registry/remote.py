"""An OCI distribution (Docker registry v2) client, as Ollama talks to registries.

`Remote` wraps one repository (`<host>/v2/<namespace>/<model>`): it answers
bearer-token challenges (the token realm must be on the registry's host; basic
credentials for the token request come from Docker's config file), follows
redirects on the same host, and of bodiless requests to the hosts the operator
allowed (`CORRAL_REDIRECT_HOSTS`, never with the token), and turns HTTP failures
into CorralErrors with Ollama's messages. Plain HTTP needs `insecure`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import grpc
import httpx

from corral import __version__
from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.manifest import MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES, go_arch, go_os
from services.registry.names import ModelName, parse_name
from services.registry.redirects import RedirectHosts

MAX_REDIRECTS = 5
USER_AGENT = f"corral/{__version__} ({go_arch()} {go_os()})"
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def remote_error(message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_UNSPECIFIED, message, code)


class Refused(CorralError):
    """A failure that retrying cannot change: a refused redirect or token realm, denied access,
    a 4xx answer other than 408 and 429."""


def refused(message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> Refused:
    return Refused(common_pb2.ERROR_REASON_UNSPECIFIED, message, code)


class Throttled(CorralError):
    """A 429 or 503: worth asking again, after `retry_after` seconds where the server said so."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(common_pb2.ERROR_REASON_UNSPECIFIED, message, grpc.StatusCode.UNAVAILABLE)
        self.retry_after = retry_after


# The gRPC code (and so the gateway's HTTP status) of a permanent answer; others are INTERNAL (500).
_REFUSED_CODES = {
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    410: grpc.StatusCode.NOT_FOUND,
}


def invalid(message: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, message)


def parse_remote_name(raw: str, insecure: bool) -> tuple[ModelName, str]:
    """The name and the scheme to use; an explicit http:// needs `insecure`."""
    scheme = "http" if insecure else "https"
    lowered = raw.lower()
    if lowered.startswith("http://"):
        if not insecure:
            raise invalid("insecure protocol http")
        scheme = "http"
    elif lowered.startswith("https://"):
        scheme = "https"
    return parse_name(raw), scheme


def docker_credentials(host: str) -> tuple[str, str] | None:
    """`host`'s user and password from Docker's config file, if it has an entry for it.

    `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: an `auths` entry keyed by
    `host[:port]` (or a URL on it) with `auth` (base64 `user:password`) or `username` and
    `password`. Credential helpers (`credsStore`, `credHelpers`) and identity tokens are not used.
    """
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            auths = json.load(f).get("auths") or {}
        entries = list(auths.items())
    except (OSError, ValueError, AttributeError):
        return None
    for key, entry in entries:
        if not isinstance(entry, dict) or urlsplit(key if "://" in key else f"//{key}").netloc.lower() != host.lower():
            continue
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:  # bad base64 or UTF-8
                continue
            if sep:
                return user, password
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def _shown(url: str) -> str:
    """`url` without its query, for messages: a signed CDN URL's query is a credential."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


class Remote:
    """One repository on one registry.

    `insecure`: the user allowed plain HTTP for this registry (so for its redirects too).
    `redirect_hosts`: other hosts whose redirects a GET or HEAD may follow, without the token.
    """

    def __init__(self, client: httpx.AsyncClient, name: ModelName, scheme: str, *, insecure: bool = False,
                 redirect_hosts: RedirectHosts | None = None) -> None:  # fmt: skip
        self.client = client
        self.name = name
        self.base = f"{scheme}://{name.host}"
        self.repo = f"{self.base}/v2/{name.namespace}/{name.model}"
        self.insecure = insecure or scheme == "http"
        self.redirect_hosts = redirect_hosts or RedirectHosts()
        self._host = urlsplit(self.base).netloc.lower()
        self._token = ""

    def blob_url(self, digest: str) -> str:
        return f"{self.repo}/blobs/{digest}"

    def manifest_url(self) -> str:
        return f"{self.repo}/manifests/{self.name.tag}"

    def same_host(self, url: str) -> str:
        """`url` resolved against the registry; refuses any other host."""
        full = urljoin(self.base + "/", url)
        if urlsplit(full).netloc.lower() != self._host:
            raise refused(f"refusing redirect to another host: {urlsplit(full).netloc}")
        return full

    def _redirect(self, current: str, location: str, bodiless: bool) -> tuple[str, bool]:
        """Where a redirect from `current` leads and whether that is the registry's own host.

        Another host must be on the allow-list, for a request without a body, over https
        unless the registry is used insecurely; anything else is refused without contacting it.
        """
        target = urljoin(current, location)
        netloc = urlsplit(target).netloc
        if netloc.lower() == self._host:
            return target, True
        if not bodiless or not self.redirect_hosts.allows(target):
            raise refused(f"refusing redirect to another host: {netloc}")
        if urlsplit(target).scheme.lower() != "https" and not self.insecure:
            raise refused(f"refusing redirect to another host over plain http: {netloc}")
        return target, False

    def _headers(self, extra: dict[str, str] | None, on_registry: bool = True) -> dict[str, str]:
        """The request's headers; the token only ever goes to the registry's own host."""
        headers = {"User-Agent": USER_AGENT, **(extra or {})}
        if self._token and on_registry:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    @asynccontextmanager
    async def open(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, content: Any = None,
        timeout: float | None = 30.0,
    ) -> AsyncIterator[httpx.Response]:  # fmt: skip
        """A streamed response after auth and redirects; the body is not read yet.

        A redirect to an allowed other host is followed without the Authorization header, and
        a 401 from there is the answer (no token is fetched for another host).
        """
        url = self.same_host(url)
        bodiless = method in ("GET", "HEAD") and content is None
        on_registry, authed, hops = True, False, 0
        while True:  # ends: one token round at most, MAX_REDIRECTS redirects at most
            req = self.client.build_request(
                method, url, headers=self._headers(headers, on_registry), content=content, timeout=timeout
            )
            try:
                resp = await self.client.send(req, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise remote_error(f"{method} {_shown(url)}: {exc}", grpc.StatusCode.UNAVAILABLE) from exc
            try:
                if (resp.status_code == 401 and on_registry and not authed
                        and (content is None or isinstance(content, bytes))):  # fmt: skip
                    challenge = resp.headers.get("www-authenticate", "")
                    await resp.aread()
                    await self._authenticate(challenge)
                    authed = True
                    continue
                if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise refused(f"too many redirects for {_shown(url)}")
                    url, on_registry = self._redirect(url, resp.headers["location"], bodiless)
                    method = "GET" if resp.status_code == 303 else method
                    continue
                yield resp
                return
            finally:
                await resp.aclose()

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            raise refused("unauthorized: access denied", grpc.StatusCode.UNAUTHENTICATED)
        fields = dict(_CHALLENGE_RE.findall(params))
        realm = fields.get("realm", "")
        if not realm or urlsplit(realm).hostname != urlsplit(self.base).hostname:
            raise refused(f"unauthorized: token realm {realm!r} is not on the registry's host",
                          grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        query["ts"] = str(int(time.time()))
        auth = None
        # Credentials travel in clear text only where the user chose plain HTTP for this registry.
        if urlsplit(realm).scheme == "https" or self.base.startswith("http://"):
            credentials = await asyncio.to_thread(docker_credentials, self._host)
            auth = httpx.BasicAuth(*credentials) if credentials else None
        try:
            resp = await self.client.get(realm, params=query, headers={"User-Agent": USER_AGENT}, auth=auth, timeout=30)
        except httpx.HTTPError as exc:
            raise remote_error(f"token request failed: {exc}", grpc.StatusCode.UNAVAILABLE) from exc
        if resp.status_code >= 500:  # the token service is down: worth another try
            raise remote_error(f"token request failed: {resp.status_code}", grpc.StatusCode.UNAVAILABLE)
        if resp.status_code != 200:
            raise refused("unauthorized: access denied", grpc.StatusCode.UNAUTHENTICATED)
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token") or ""
        except (ValueError, AttributeError):
            token = ""
        if not isinstance(token, str) or not token:
            raise refused("unauthorized: the token service returned no token", grpc.StatusCode.UNAUTHENTICATED)
        self._token = token

    async def get_manifest(self) -> bytes:
        """The raw manifest bytes, refused past MAX_MANIFEST_BYTES."""
        headers = {"Accept": MANIFEST_MEDIA_TYPE}
        async with self.open("GET", self.manifest_url(), headers=headers) as resp:
            if resp.status_code == 404:
                raise CorralError(common_pb2.ERROR_REASON_MODEL_NOT_FOUND, "pull model manifest: file does not exist")
            await raise_for_status(resp)
            if int(resp.headers.get("content-length") or 0) > MAX_MANIFEST_BYTES:
                raise invalid("pull model manifest: manifest is too large")
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise invalid("pull model manifest: manifest is too large")
        return bytes(data)

    async def blob_exists(self, digest: str) -> bool:
        async with self.open("HEAD", self.blob_url(digest)) as resp:
            if resp.status_code == 404:
                return False
            await raise_for_status(resp)
            return True

    async def blob_size(self, digest: str) -> int:
        async with self.open("HEAD", self.blob_url(digest)) as resp:
            await raise_for_status(resp)
            return int(resp.headers.get("content-length") or 0)

    async def start_upload(self) -> str:
        async with self.open("POST", f"{self.repo}/blobs/uploads/", content=b"") as resp:
            await raise_for_status(resp)
            location = resp.headers.get("docker-upload-location") or resp.headers.get("location")
        if not location:
            raise remote_error("registry did not return an upload location")
        return self.same_host(location)

    async def send(self, method: str, url: str, *, headers: dict[str, str], content: bytes | AsyncIterable[bytes],
                   timeout: float | None = None) -> httpx.Headers:  # fmt: skip
        async with self.open(method, url, headers=headers, content=content, timeout=timeout) as resp:
            await raise_for_status(resp)
            return resp.headers

    async def put_manifest(self, data: bytes) -> None:
        headers = {"Content-Type": MANIFEST_MEDIA_TYPE}
        await self.send("PUT", self.manifest_url(), headers=headers, content=data, timeout=60)


def retry_after(resp: httpx.Response) -> float | None:
    """The pause a `Retry-After` header asks for (seconds or an HTTP date), if any."""
    value = resp.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


async def raise_for_status(resp: httpx.Response) -> None:
    """Ollama's `<status>: <body>` for a failed answer, typed by whether asking again can help."""
    status = resp.status_code
    if status < 400:
        return
    body = (await resp.aread())[:2048].decode("utf-8", errors="replace").strip()
    if status == 401:
        raise refused("unauthorized: access denied", grpc.StatusCode.UNAUTHENTICATED)
    message = f"{status}: {body}"
    if status in (429, 503):
        raise Throttled(message, retry_after(resp))
    if status == 408 or status >= 500:
        raise remote_error(message)
    raise refused(message, _REFUSED_CODES.get(status, grpc.StatusCode.INTERNAL))
