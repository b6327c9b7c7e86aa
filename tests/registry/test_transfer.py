"""Push and pull against a real OCI registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.core import Registry
from services.registry.download import TransferSettings, partial_name
from services.registry.manifest import Manifest
from tests.ggufs import TinyGGUF, file_digest, write_tiny_gguf
from tests.registry.helpers import events, publish
from tests.registry.oci import OciRegistry, Proxy

SMALL_PARTS = TransferSettings(parallel=2, min_part=1 << 20, save_seconds=0.05, backoff_seconds=0.05)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    """A ~12 MB GGUF: big enough to interrupt mid-blob through a throttled proxy."""
    return write_tiny_gguf(tmp_path_factory.mktemp("big") / "big.gguf", n_embd=256, n_ff=2048, n_layer=2)


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "other", SMALL_PARTS)
    try:
        yield reg
    finally:
        await reg.close()


async def test_push_then_pull_round_trip(registry: Registry, other: Registry, oci: OciRegistry, tiny: TinyGGUF) -> None:
    name = f"{oci.host}/test/tiny:v1"
    pushed = await publish(registry, tiny, name)
    statuses = [e.status for e in pushed]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert f"pushing {tiny.digest[7:19]}" in statuses

    pulled = await events(other.pull(name, insecure=True))
    statuses = [e.status for e in pulled]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [e for e in pulled if e.digest == tiny.digest]
    assert layer[0].status == f"pulling {tiny.digest[7:19]}" and layer[-1].completed == tiny.size == layer[-1].total

    mine, theirs = await registry.resolve(name), await other.resolve(name)
    assert theirs.manifest_digest == mine.manifest_digest
    assert theirs.system == "be brief" and theirs.model_digest == tiny.digest
    assert file_digest(Path(theirs.model_path)) == tiny.digest
    assert (other.store.manifests_dir / oci.host.replace(":", "%3A") / "test" / "tiny" / "v1").is_file()

    again = await events(other.pull(name, insecure=True))  # everything present: nothing fetched
    assert [e for e in again if e.digest == tiny.digest][-1].completed == tiny.size
    assert other.downloads.fetched_total == Manifest.from_bytes(await other.manifest_bytes(name)).size

    # Pushing again finds every blob in the registry already.
    assert (await events(registry.push(name, insecure=True)))[-1].status == "success"


async def test_plain_http_needs_insecure(other: Registry, oci: OciRegistry) -> None:
    with pytest.raises(CorralError) as err:
        await events(other.pull(f"http://{oci.host}/test/tiny:v1"))
    assert err.value.message == "insecure protocol http"
    with pytest.raises(CorralError):  # https against a plain-http registry fails
        await events(other.pull(f"{oci.host}/test/tiny:v1"))
    assert await other.list_models() == []


async def test_unknown_remote_model(other: Registry, oci: OciRegistry) -> None:
    with pytest.raises(CorralError) as err:
        await events(other.pull(f"{oci.host}/test/absent:v1", insecure=True))
    assert err.value.reason == common_pb2.ERROR_REASON_MODEL_NOT_FOUND
    assert err.value.message == "pull model manifest: file does not exist"


async def test_tampered_blob_is_refused(registry: Registry, other: Registry, oci: OciRegistry, tiny: TinyGGUF) -> None:
    name = f"{oci.host}/test/tampered:v1"
    await publish(registry, tiny, name)
    data = oci.blob_data(tiny.digest)
    original = data.read_bytes()
    try:
        data.write_bytes(bytes(len(original)))  # same size, other bytes
        with pytest.raises(CorralError) as err:
            await events(other.pull(name, insecure=True))
    finally:
        data.write_bytes(original)
    assert err.value.reason == common_pb2.ERROR_REASON_DIGEST_MISMATCH
    assert err.value.message.startswith(f"digest mismatch, file must be downloaded again: want {tiny.digest}, got ")
    assert await other.list_models() == []
    assert not other.store.blob_path(tiny.digest).exists()
    assert not (other.store.blobs_dir / partial_name(tiny.digest)).exists()  # other layers stay resumable


async def test_resume_after_restart(registry: Registry, oci: OciRegistry, big: TinyGGUF, tmp_path: Path) -> None:
    await publish(registry, big, f"{oci.host}/test/big:v1")
    proxy = Proxy(oci.host, rate=4 << 20)
    try:
        name = f"{proxy.host}/test/big:v1"
        store = tmp_path / "resume"
        first = await Registry.open(store, SMALL_PARTS)
        task = asyncio.create_task(events(first.pull(name, insecure=True)))
        while proxy.bytes_down < big.size * 0.4:
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()  # the process goes away mid-blob
        with pytest.raises(asyncio.CancelledError):
            await task
        await first.close()
        assert list((store / "blobs").glob("*-partial"))

        proxy.rate, proxy.bytes_down = 0, 0
        second = await Registry.open(store, SMALL_PARTS)  # a new process on the same store
        try:
            assert (await events(second.pull(name, insecure=True)))[-1].status == "success"
            assert proxy.bytes_down < big.size * 0.75
            model = await second.resolve(name)
            assert file_digest(Path(model.model_path)) == big.digest
            assert not list((store / "blobs").glob("*-partial"))
            assert await second.index.get_parts(big.digest) == []
        finally:
            await second.close()
    finally:
        proxy.close()


async def test_concurrent_pulls_download_once(
    registry: Registry, other: Registry, oci: OciRegistry, big: TinyGGUF
) -> None:
    await publish(registry, big, f"{oci.host}/test/shared:v1")
    proxy = Proxy(oci.host, rate=32 << 20)
    try:
        name = f"{proxy.host}/test/shared:v1"
        a, b = await asyncio.gather(events(other.pull(name, insecure=True)), events(other.pull(name, insecure=True)))
        assert a[-1].status == b[-1].status == "success"
        assert proxy.bytes_down < big.size * 1.3
    finally:
        proxy.close()
