"""Blob redirects, against a real registry behind a real redirecting HTTP front.

The client follows a redirect only when it stays on the registry's own host
(scheme-less `host:port`, compared exactly); anything else fails the pull with
`refusing redirect to another host: <host>` and never touches that host. That is the
default (CORRAL_REDIRECT_HOSTS empty); test_transfer_redirect_hosts.py covers an allow-list.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from corral.errors import CorralError
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.download import TransferSettings, partial_name
from tests.ggufs import TinyGGUF, file_digest
from tests.registry.helpers import create, events, upload
from tests.registry.oci import Front, OciRegistry, start_oci_registry

# Default retries and backoff (0.5 s, doubled): a refusal must fail at once, not after them.
SETTINGS = TransferSettings(min_part=1 << 20)
NAME = "test/redirect:v1"


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    reg = start_oci_registry(tmp_path_factory.mktemp("oci-redirect"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
async def published(oci: OciRegistry, tiny: TinyGGUF, tmp_path_factory: pytest.TempPathFactory) -> str:
    reg = await Registry.open(tmp_path_factory.mktemp("publisher"))
    try:
        await upload(reg, tiny)
        name = f"{oci.host}/{NAME}"
        await create(reg, CreateRequest(name=name, files={"m.gguf": tiny.digest}))
        assert [e async for e in reg.push(name, insecure=True)][-1].status == "success"
    finally:
        await reg.close()
    return NAME


@pytest.fixture
def front(oci: OciRegistry) -> Iterator[Front]:
    f = Front(oci.host)
    yield f
    f.close()


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "other", SETTINGS)
    try:
        yield reg
    finally:
        await reg.close()


def blob_gets(front: Front) -> list[tuple[str, int]]:
    return [(path, status) for method, path, status in front.requests if method == "GET" and "/blobs/" in path]


async def test_same_host_redirect_is_followed(other: Registry, front: Front, published: str, tiny: TinyGGUF) -> None:
    front.redirect = lambda path: Front.DIRECT + path  # relative Location, same host
    pulled = await events(other.pull(f"{front.host}/{published}", insecure=True))
    assert pulled[-1].status == "success"
    gets = blob_gets(front)
    redirected = [p for p, status in gets if status == 307]
    assert redirected and all(p.startswith("/v2/") for p in redirected)
    followed = [(p, s) for p, s in gets if p.startswith(Front.DIRECT)]
    assert {p.removeprefix(Front.DIRECT) for p, _ in followed} == set(redirected)
    assert {s for _, s in followed} <= {200, 206}
    model = await other.resolve(f"{front.host}/{published}")
    assert file_digest(Path(model.model_path)) == tiny.digest


async def test_cross_host_redirect_is_refused(
    other: Registry, front: Front, oci: OciRegistry, published: str, tiny: TinyGGUF, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = Front(oci.host, bind="127.0.0.2")  # another loopback address: another host by any rule
    try:
        front.redirect = lambda path: f"http://{elsewhere.host}{path}"
        name = f"{front.host}/{published}"
        # The other host would serve the blob: refusing it is the client's choice, not a failure there.
        location = f"http://{elsewhere.host}/v2/{published.split(':')[0]}/blobs/{tiny.digest}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(location)).content == tiny.path.read_bytes()
        elsewhere.requests.clear()

        with caplog.at_level(logging.WARNING, "services.registry.download"), pytest.raises(CorralError) as err:
            await events(other.pull(name, insecure=True))
        assert not [r for r in caplog.records if "retry" in r.getMessage()]  # refused at once, not retried
        assert err.value.message == f"refusing redirect to another host: {elsewhere.host}"
        assert elsewhere.requests == []  # never contacted
        assert any(status == 307 for _, status in blob_gets(front))

        # No model, no manifest, no blob; at most an empty resumable partial of a refused layer.
        assert await other.list_models() == []
        assert not list(other.store.manifests_dir.rglob("*"))
        blobs = other.store.blobs_dir
        assert not [p for p in blobs.iterdir() if not p.name.endswith("-partial")]
        for partial in blobs.glob("*-partial"):
            digest = "sha256:" + partial.name.removeprefix("sha256-").removesuffix("-partial")
            assert partial.name == partial_name(digest)
            assert sum(p.completed for p in await other.index.get_parts(digest)) == 0

        # Once the front stops redirecting, the same store pulls the model whole.
        front.redirect = lambda _path: None
        assert (await events(other.pull(name, insecure=True)))[-1].status == "success"
        assert not list(blobs.glob("*-partial"))
        assert file_digest(Path((await other.resolve(name)).model_path)) == tiny.digest
    finally:
        elsewhere.close()
