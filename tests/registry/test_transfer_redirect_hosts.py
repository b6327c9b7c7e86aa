"""Blob redirects to an allowed other host (CORRAL_REDIRECT_HOSTS), against real servers.

Debian's docker-registry runs with token authentication (a real token server), so the
client holds a bearer token that could leak. A `Front` before it answers every blob GET
with a 307 to a `BlobHost` on 127.0.0.2 (another host by any rule), the way
registry.ollama.ai sends blob GETs to signed Cloudflare R2 URLs. The blob host serves the
registry's own blob files with `Range` support and records every request's headers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import certifi
import pytest

from corral.errors import CorralError
from services.registry.core import Registry
from services.registry.download import TransferSettings, split_parts
from services.registry.manifest import Manifest
from services.registry.redirects import RedirectHosts
from services.registry.remote import MAX_REDIRECTS
from tests.ggufs import TinyGGUF, file_digest
from tests.registry.helpers import events, publish
from tests.registry.oci import BlobHost, Front, OciRegistry, Tls, self_signed_tls, start_oci_registry
from tests.registry.token_server import TokenServer

# Parts of 16 KiB: the tiny model blob (≈150 KB) comes in about ten ranged GETs, four at a time.
SETTINGS = TransferSettings(parallel=4, min_part=16 << 10)
REPO = "test/cdn"
NAME = f"{REPO}:v1"
SIGNED = "X-Amz-Expires=3600&X-Amz-Signature=0123456789abcdef"  # stands for a signed URL's query
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

Servers = Callable[..., tuple[Front, BlobHost]]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory, tokens: TokenServer) -> Iterator[OciRegistry]:
    reg = start_oci_registry(tmp_path_factory.mktemp("oci-cdn"), tokens)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
async def published(oci: OciRegistry, tiny: TinyGGUF, tmp_path_factory: pytest.TempPathFactory) -> str:
    reg = await Registry.open(tmp_path_factory.mktemp("publisher"))
    try:
        assert (await publish(reg, tiny, f"{oci.host}/{NAME}"))[-1].status == "success"
    finally:
        await reg.close()
    return NAME


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return self_signed_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def environment(tokens: TokenServer, tls: Tls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no credentials: anonymous tokens
    monkeypatch.setattr(certifi, "where", lambda: str(tls.ca))  # the pull's client trusts the test CA
    tokens.clear()


@pytest.fixture
def servers(oci: OciRegistry, tls: Tls) -> Iterator[Servers]:
    """make(https=False, cdn_https=False): a front whose blob GETs redirect to a fresh blob host."""
    made: list[tuple[Front, BlobHost]] = []

    def files(path: str) -> Path | None:
        m = re.fullmatch(rf"/r2/(sha256:[0-9a-f]{{64}})\?{SIGNED}", path)
        return oci.blob_data(m.group(1)) if m else None

    def make(https: bool = False, cdn_https: bool = False) -> tuple[Front, BlobHost]:
        front = Front(oci.host, tls=tls if https else None)
        cdn = BlobHost(files, tls=tls if cdn_https else None)
        made.append((front, cdn))
        scheme = "https" if cdn_https else "http"

        def redirect(path: str) -> str | None:
            m = _DIGEST_RE.search(path)
            return f"{scheme}://{cdn.host}/r2/{m.group(0)}?{SIGNED}" if m else None

        front.redirect = redirect
        return front, cdn

    yield make
    for front, cdn in made:
        front.close()
        cdn.close()


@asynccontextmanager
async def store(tmp_path: Path, hosts: list[str]) -> AsyncIterator[Registry]:
    settings = replace(SETTINGS, redirect_hosts=RedirectHosts.parse(hosts))
    reg = await Registry.open(tmp_path / "store", settings)
    try:
        yield reg
    finally:
        await reg.close()


def registry_tokens(front: Front) -> set[str]:
    """The bearer tokens the client sent with its blob GETs to the registry's host (all answered 307)."""
    gets = [r for r in front.received if r.method == "GET" and "/blobs/" in r.path]
    assert gets and {r.status for r in gets} == {307}
    sent = {r.headers.get("authorization", "") for r in gets}
    assert all(re.fullmatch(r"Bearer [\w-]+\.[\w-]+\.[\w-]+", value) for value in sent)  # a JWT each time
    return {value.removeprefix("Bearer ") for value in sent}


def assert_nothing_leaked(front: Front, cdn: BlobHost) -> None:
    """The blob host never saw an Authorization header, nor the token anywhere in its requests."""
    secrets = registry_tokens(front)
    seen = cdn.seen()
    assert seen
    for r in seen:
        assert "authorization" not in r.headers
        assert not any(token in text for token in secrets for text in (r.path, *r.headers.values()))


async def pull_fails(reg: Registry, name: str, insecure: bool, caplog: pytest.LogCaptureFixture) -> str:
    """The pull's error message; it must fail at once, without retries, and leave no model."""
    with caplog.at_level(logging.WARNING, "services.registry.download"), pytest.raises(CorralError) as err:
        await events(reg.pull(name, insecure=insecure))
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert await reg.list_models() == []
    return err.value.message


async def test_allowed_host_serves_ranged_parts_without_the_token(
    servers: Servers, published: str, tiny: TinyGGUF, tmp_path: Path
) -> None:
    front, cdn = servers()
    name = f"{front.host}/{published}"
    async with store(tmp_path, [f"127.0.0.2:{cdn.port}"]) as reg:
        assert (await events(reg.pull(name, insecure=True)))[-1].status == "success"
        assert file_digest(Path((await reg.resolve(name)).model_path)) == tiny.digest
        manifest = Manifest.from_bytes(await reg.manifest_bytes(name))
    assert_nothing_leaked(front, cdn)

    # Every blob came from the blob host, under the signed URL the registry's host gave.
    seen = cdn.seen()
    digests = {layer.digest for layer in (*manifest.layers, manifest.config)}
    assert {r.path for r in seen} == {f"/r2/{d}?{SIGNED}" for d in digests}
    assert {(r.method, r.status) for r in seen} == {("GET", 206)}
    assert {r.headers.get("accept-encoding") for r in seen} == {"identity"}

    # The model blob in ranged parts: each part's Range went through the redirect unchanged.
    ranges = sorted((r.headers["range"] for r in seen if tiny.digest in r.path), key=lambda v: int(v[6:].split("-")[0]))
    parts = split_parts(tiny.size, SETTINGS)
    assert len(parts) > 1
    assert ranges == [f"bytes={p.offset}-{p.offset + p.size - 1}" for p in parts]
    to_front = sorted(r.headers["range"] for r in front.received if tiny.digest in r.path)
    assert to_front == sorted(ranges)


async def test_without_the_allow_list_the_redirect_is_refused(
    servers: Servers, published: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    front, cdn = servers()
    async with store(tmp_path, []) as reg:  # the default: CORRAL_REDIRECT_HOSTS empty
        message = await pull_fails(reg, f"{front.host}/{published}", True, caplog)
    assert message == f"refusing redirect to another host: {cdn.host}"
    assert cdn.seen() == []  # never contacted
    assert any(r.status == 307 for r in front.received)


@pytest.mark.parametrize(
    "pattern",
    [
        "127.0.0.3:{port}",  # another address
        "127.0.0.2",  # no port: 80 only
        "127.0.0.2:{other}",  # another port
        "localhost:{port}",  # names are not resolved
        "*.0.0.2:{port}",  # a wildcard never matches an IP address
        "*.example.com, cdn.example.com:{port}",
    ],
)
async def test_a_pattern_that_does_not_match_is_refused(
    servers: Servers, published: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, pattern: str
) -> None:
    front, cdn = servers()
    hosts = pattern.format(port=cdn.port, other=cdn.port % 65535 + 1).split(",")
    async with store(tmp_path, hosts) as reg:
        message = await pull_fails(reg, f"{front.host}/{published}", True, caplog)
    assert message == f"refusing redirect to another host: {cdn.host}"
    assert cdn.seen() == []


async def test_https_registry_to_allowed_https_host(
    servers: Servers, published: str, tiny: TinyGGUF, tmp_path: Path
) -> None:
    """The shape of registry.ollama.ai: https registry, 307 to an https blob host on another name."""
    front, cdn = servers(https=True, cdn_https=True)
    name = f"{front.host}/{published}"
    async with store(tmp_path, [f"127.0.0.2:{cdn.port}"]) as reg:
        assert (await events(reg.pull(name, insecure=False)))[-1].status == "success"
        assert file_digest(Path((await reg.resolve(name)).model_path)) == tiny.digest
    assert_nothing_leaked(front, cdn)
    assert {r.status for r in cdn.seen()} == {206}


async def test_plain_http_to_an_allowed_host_needs_insecure(
    servers: Servers, published: str, tiny: TinyGGUF, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    front, cdn = servers(https=True, cdn_https=False)
    async with store(tmp_path, [f"127.0.0.2:{cdn.port}"]) as reg:
        message = await pull_fails(reg, f"{front.host}/{published}", False, caplog)
        assert message == f"refusing redirect to another host over plain http: {cdn.host}"
        assert cdn.seen() == []

        # The same https registry used with insecure (an explicit https:// keeps TLS to it).
        assert (await events(reg.pull(f"https://{front.host}/{published}", insecure=True)))[-1].status == "success"
        assert file_digest(Path((await reg.resolve(f"{front.host}/{published}")).model_path)) == tiny.digest
    assert_nothing_leaked(front, cdn)


async def test_a_challenge_from_the_other_host_gets_no_token(
    servers: Servers, published: str, tokens: TokenServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 from the blob host is the answer: no token is fetched for it, even when the realm it
    names is the registry's own token service."""
    front, cdn = servers()
    challenge = f'Bearer realm="{tokens.realm}",service="{tokens.service}",scope="repository:{REPO}:pull"'
    cdn.answer = lambda _path: (401, {"WWW-Authenticate": challenge}, b"")
    async with store(tmp_path, [f"127.0.0.2:{cdn.port}"]) as reg:
        message = await pull_fails(reg, f"{front.host}/{published}", True, caplog)
    assert message == "unauthorized: access denied"
    assert tokens.scopes() == [f"repository:{REPO}:pull"]  # only the manifest's round
    assert_nothing_leaked(front, cdn)


async def test_redirect_loop_on_the_other_host_is_cut(
    servers: Servers, published: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    front, cdn = servers()
    cdn.answer = lambda path: (307, {"Location": path}, b"")  # relative: to itself, forever
    async with store(tmp_path, [f"127.0.0.2:{cdn.port}"]) as reg:
        message = await pull_fails(reg, f"{front.host}/{published}", True, caplog)
    # The signed query stays out of the message.
    assert re.fullmatch(rf"too many redirects for http://{re.escape(cdn.host)}/r2/sha256:[0-9a-f]{{64}}", message)
    assert_nothing_leaked(front, cdn)
    # Each blob GET: the registry's 307, then MAX_REDIRECTS - 1 more followed here, and the
    # answer to the last is the one too many. Other blobs' GETs may have been cut short.
    failed = _DIGEST_RE.search(message)
    assert failed
    for digest in {m.group(0) for r in cdn.seen() if (m := _DIGEST_RE.search(r.path))}:
        gets = sum(1 for r in front.received if r.status == 307 and digest in r.path)
        here = sum(1 for r in cdn.seen() if digest in r.path)
        assert here <= gets * MAX_REDIRECTS
        if digest == failed.group(0):
            assert here >= MAX_REDIRECTS
