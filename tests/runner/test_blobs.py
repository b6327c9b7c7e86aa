"""A runner far from the store: blobs fetched from a real registry over gRPC, verified, cached, resumed."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from corral.errors import CorralError, from_rpc_error
from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, runner_pb2, runner_pb2_grpc
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.servicer import register as register_registry
from services.runner.blobs import BlobCache, BlobReader, RegistryBlobReader
from services.runner.core import Runner
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec
from services.runner.progress import FETCH_SHARE, LoadProgress
from services.runner.sampling import SamplingParams
from services.runner.servicer import RunnerServicer
from services.runner.servicer import register as register_runner
from tests.ggufs import TinyGGUF, write_tiny_gguf
from tests.runner.conftest import FakeProbe, collect, eventually
from tests.runner.test_tiny_models import first_logprobs, write_tiny_lora

MiB = 1 << 20
ELSEWHERE = "/registry-host/models/blobs"  # the store's path, which this "runner" cannot see


class CountingReader:
    """A BlobReader around the real one that records each call's offset and the bytes it got."""

    def __init__(self, inner: BlobReader, delay: float = 0.0) -> None:
        self.inner = inner
        self.source = inner.source
        self.delay = delay  # seconds per chunk, to catch a fetch in the middle
        self.offsets: list[int] = []
        self.bytes = 0

    async def read(self, digest: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        self.offsets.append(offset)
        async with contextlib.aclosing(self.inner.read(digest, offset)) as stream:
            async for size, chunk in stream:
                self.bytes += len(chunk)
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield size, chunk


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), MiB):
        yield data[i : i + MiB]


async def put(reg: Registry, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    await reg.write_blob(digest, _chunks(data))
    return digest


def blob_name(digest: str) -> str:
    return digest.replace(":", "-")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "store")
    try:
        yield reg
    finally:
        await reg.close()


@pytest.fixture
async def registry_addr(registry: Registry) -> AsyncIterator[str]:
    service = GrpcService("registry", "127.0.0.1:0", register_registry(registry))
    await service.start()
    try:
        yield f"127.0.0.1:{service.port}"
    finally:
        await service.stop(grace=0)


@pytest.fixture
async def reader(registry_addr: str) -> AsyncIterator[CountingReader]:
    inner = RegistryBlobReader(registry_addr)
    try:
        yield CountingReader(inner)
    finally:
        await inner.close()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "runner-cache"


@pytest.fixture
def cache(cache_dir: Path, reader: CountingReader) -> BlobCache:
    return BlobCache(cache_dir, reader)


@pytest.fixture
def data() -> bytes:
    return np.random.default_rng(7).bytes(5 * MiB + 4321)


def leftovers(cache_dir: Path) -> set[str]:
    """Files besides complete blobs (lock files are empty and harmless)."""
    if not cache_dir.exists():
        return set()
    return {p.name for p in cache_dir.iterdir() if p.name.endswith("-partial") or p.name.startswith(".")}


# ---- BlobCache against the real registry service ------------------------------------------


async def test_a_readable_store_path_is_used_as_is(cache: BlobCache, reader: CountingReader, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "sha256-abc"
    shared.parent.mkdir()
    shared.write_bytes(b"not even checked")
    digest = "sha256:" + "0" * 64
    assert await cache.ensure_local(str(shared), digest) == shared  # no copy, no re-hash
    assert reader.offsets == [] and not cache.root.exists()


async def test_fetch_verifies_caches_and_is_not_repeated(
    cache: BlobCache, reader: CountingReader, registry: Registry, data: bytes
) -> None:
    digest = await put(registry, data)
    seen: list[tuple[int, int]] = []
    path = await cache.ensure_local(f"{ELSEWHERE}/{blob_name(digest)}", digest, lambda d, t: seen.append((d, t)))
    assert path == cache.root / blob_name(digest)
    assert path.read_bytes() == data
    assert reader.offsets == [0] and reader.bytes == len(data)
    assert seen[-1] == (len(data), len(data)) and len(seen) >= 5  # 1 MiB messages
    assert [d for d, _t in seen] == sorted(d for d, _t in seen)
    assert leftovers(cache.root) == set()
    assert not (cache.root / f"{blob_name(digest)}-lock").exists()
    # Cached: found without asking the registry again.
    assert await cache.ensure_local(f"{ELSEWHERE}/{blob_name(digest)}", digest) == path
    assert reader.offsets == [0]


async def test_concurrent_fetches_of_a_blob_share_one(
    cache: BlobCache, reader: CountingReader, registry: Registry, data: bytes
) -> None:
    digest = await put(registry, data)
    paths = await asyncio.gather(*(cache.fetch(digest) for _ in range(3)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert reader.offsets == [0]


async def test_a_partial_file_is_resumed(
    cache: BlobCache, reader: CountingReader, registry: Registry, data: bytes
) -> None:
    digest = await put(registry, data)
    kept = 3 * MiB + 17
    cache.root.mkdir()
    (cache.root / f"{blob_name(digest)}-partial").write_bytes(data[:kept])
    seen: list[int] = []
    path = await cache.fetch(digest, lambda d, _t: seen.append(d))
    assert path.read_bytes() == data
    assert reader.offsets == [kept] and reader.bytes == len(data) - kept
    assert seen[0] > kept  # progress counts the bytes already there
    assert leftovers(cache.root) == set()


@pytest.mark.parametrize("stale", [b"x" * (2 * MiB), b"y" * (6 * MiB)], ids=["garbage", "longer than the blob"])
async def test_a_stale_partial_is_fetched_again_from_zero(
    cache: BlobCache, reader: CountingReader, registry: Registry, data: bytes, stale: bytes
) -> None:
    digest = await put(registry, data)
    cache.root.mkdir()
    (cache.root / f"{blob_name(digest)}-partial").write_bytes(stale)
    path = await cache.fetch(digest)
    assert path.read_bytes() == data
    assert reader.offsets == [len(stale), 0]


async def test_a_corrupt_registry_blob_is_refused(
    cache: BlobCache, registry: Registry, tmp_path: Path, data: bytes
) -> None:
    digest = await put(registry, data)
    blob = registry.store.blob_path(digest)
    with blob.open("r+b") as f:  # same size, other bytes
        f.seek(MiB)
        f.write(b"\0" * 64)
    with pytest.raises(CorralError) as err:
        await cache.fetch(digest)
    assert err.value.reason == common_pb2.ERROR_REASON_DIGEST_MISMATCH
    assert f"blob {digest} fetched from the registry at" in err.value.message
    assert "does not match its digest" in err.value.message
    assert not (cache.root / blob_name(digest)).exists()
    assert leftovers(cache.root) == set()


async def test_a_blob_the_registry_lacks(cache: BlobCache) -> None:
    digest = "sha256:" + "ab" * 32
    with pytest.raises(CorralError) as err:
        await cache.ensure_local(f"{ELSEWHERE}/{blob_name(digest)}", digest)
    assert err.value.reason == common_pb2.ERROR_REASON_BLOB_NOT_FOUND
    assert err.value.message.startswith(f"blob {digest} is not in the registry at 127.0.0.1:")
    assert leftovers(cache.root) == set()


async def test_an_unreachable_registry_fails_quickly(cache_dir: Path) -> None:
    reader = RegistryBlobReader(f"127.0.0.1:{closed_port()}")
    cache = BlobCache(cache_dir, reader)
    digest = "sha256:" + "cd" * 32
    t0 = time.monotonic()
    try:
        with pytest.raises(CorralError) as err:
            await cache.ensure_local(f"{ELSEWHERE}/{blob_name(digest)}", digest)
    finally:
        await reader.close()
    assert time.monotonic() - t0 < 5
    # LOAD_FAILED travels as INTERNAL: UNAVAILABLE would make the scheduler drop this runner.
    assert err.value.reason == common_pb2.ERROR_REASON_LOAD_FAILED
    assert f"cannot fetch blob {digest}: the registry at {reader.address} is unreachable" in err.value.message
    assert not (cache_dir / blob_name(digest)).exists() and leftovers(cache_dir) == set()


async def test_a_cancelled_fetch_stops_and_leaves_a_resumable_partial(
    registry_addr: str, registry: Registry, cache_dir: Path, data: bytes
) -> None:
    digest = await put(registry, data)
    inner = RegistryBlobReader(registry_addr)
    slow = CountingReader(inner, delay=0.05)
    try:
        task = asyncio.create_task(BlobCache(cache_dir, slow).fetch(digest))
        assert await eventually(lambda: slow.bytes >= 2 * MiB)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        partial = cache_dir / f"{blob_name(digest)}-partial"
        assert await eventually(lambda: _unlocked(cache_dir))
        got = slow.bytes
        await asyncio.sleep(0.3)
        assert slow.bytes == got  # the stream stopped
        kept = partial.stat().st_size
        assert MiB <= kept <= got < len(data) and not (cache_dir / blob_name(digest)).exists()

        fast = CountingReader(inner)
        path = await BlobCache(cache_dir, fast).fetch(digest)
        assert path.read_bytes() == data and fast.offsets == [kept]
    finally:
        await inner.close()


def _unlocked(cache_dir: Path) -> bool:
    """True once no fetch holds a lock in `cache_dir` (the cancelled one released it)."""
    for lock in cache_dir.glob("*-lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


# ---- load progress --------------------------------------------------------------------------


def test_progress_without_a_fetch_is_llamas_fraction() -> None:
    p = LoadProgress()
    p.fetching(0)
    for f in (0.0, 0.3, 0.9, 1.0):
        p.loaded(f)
        assert p.value == f


def test_progress_over_fetches_and_load_is_monotonic() -> None:
    p = LoadProgress()
    p.fetching(2)
    seen = [p.value]
    for index, total in ((0, 100), (1, 10)):
        for done in range(0, total + 1, 5):
            p.fetched(index, done, total)
            seen.append(p.value)
        assert p.value == pytest.approx(FETCH_SHARE * (index + 1) / 2)
    p.fetched(0, 100, 100)  # a late report of an earlier blob does not go back
    seen.append(p.value)
    for f in (0.0, 0.5, 1.0):
        p.loaded(f)
        seen.append(p.value)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(set(seen)) > 10  # it grows in every phase, so the scheduler's stall timer restarts
    p.fetched(1, 0, 0)  # an empty blob counts as done
    assert p.value == 1.0


# ---- the runner loading what it cannot see --------------------------------------------------


@pytest.fixture
async def tiny_in_registry(registry: Registry, tmp_path: Path) -> TinyGGUF:
    """A llama GGUF of ~8 MiB (several ReadBlob messages), stored as a model in the registry."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=256, n_ff=1024, n_layer=2)
    await put(registry, model.path.read_bytes())
    async for _ in registry.create(CreateRequest(name="tiny", files={"tiny.gguf": model.digest})):
        pass
    return model


@pytest.fixture
async def runner_stub(
    cache: BlobCache,
) -> AsyncIterator[tuple[Runner, runner_pb2_grpc.RunnerServiceStub]]:
    runner = Runner("far-runner", FakeProbe(), cache)
    service = GrpcService("runner", "127.0.0.1:0", register_runner(RunnerServicer(runner)))
    await service.start()
    try:
        async with channel(f"127.0.0.1:{service.port}") as ch:
            yield runner, runner_pb2_grpc.RunnerServiceStub(ch)
    finally:
        await runner.unload_all()
        await service.stop(grace=0)


def load_request(instance_id: str, model: TinyGGUF) -> runner_pb2.LoadModelRequest:
    return runner_pb2.LoadModelRequest(
        instance_id=instance_id,
        model_path=f"{ELSEWHERE}/{blob_name(model.digest)}",
        model_digest=model.digest,
        options=common_pb2.LoadOptions(num_ctx=128),
    )


async def test_a_runner_loads_a_model_it_cannot_see_and_generates(
    runner_stub: tuple[Runner, runner_pb2_grpc.RunnerServiceStub],
    tiny_in_registry: TinyGGUF,
    reader: CountingReader,
    cache_dir: Path,
) -> None:
    runner, stub = runner_stub
    await stub.LoadModel(load_request("far-1", tiny_in_registry))
    assert reader.offsets == [0] and reader.bytes == tiny_in_registry.size
    assert (cache_dir / blob_name(tiny_in_registry.digest)).read_bytes() == tiny_in_registry.path.read_bytes()
    req = runner_pb2.GenerateRequest(
        instance_id="far-1",
        prompt_tokens=[1, 260, 261],
        sampling=common_pb2.SamplingOptions(temperature=0.0, num_predict=4),
    )
    chunks = [c async for c in stub.Generate(req)]
    assert chunks[-1].done and chunks[-1].stats.eval_count >= 1
    status = await stub.GetStatus(runner_pb2.GetStatusRequest())
    assert [(i.instance_id, i.model_path) for i in status.instances] == [
        ("far-1", load_request("", tiny_in_registry).model_path)
    ]

    # A second instance of the same model comes from the cache.
    await stub.LoadModel(load_request("far-2", tiny_in_registry))
    assert reader.offsets == [0]
    assert sorted(runner.instance_ids()) == ["far-1", "far-2"]


async def test_load_progress_grows_through_the_fetch_and_the_load(
    registry_addr: str, tiny_in_registry: TinyGGUF, cache_dir: Path
) -> None:
    inner = RegistryBlobReader(registry_addr)
    runner = Runner("far-runner", FakeProbe(), BlobCache(cache_dir, CountingReader(inner, delay=0.01)))
    seen: list[float] = []

    async def watch() -> None:
        while True:
            seen.extend(s.load_progress for s in runner.status() if s.info is None)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        spec = LoadSpec(f"{ELSEWHERE}/x", num_ctx=128, model_digest=tiny_in_registry.digest)
        await runner.load("far", spec)
    finally:
        watcher.cancel()
        await runner.unload_all()
        await inner.close()
    assert seen == sorted(seen)
    fetch = [v for v in seen if v < FETCH_SHARE]
    assert len(set(fetch)) >= 3  # it grew while the blob was fetched


async def test_a_corrupt_blob_fails_the_load_with_a_clear_error(
    runner_stub: tuple[Runner, runner_pb2_grpc.RunnerServiceStub],
    tiny_in_registry: TinyGGUF,
    registry: Registry,
    cache_dir: Path,
) -> None:
    _runner, stub = runner_stub
    with registry.store.blob_path(tiny_in_registry.digest).open("r+b") as f:
        f.seek(tiny_in_registry.size // 2)
        f.write(b"\xff" * 16)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.LoadModel(load_request("bad", tiny_in_registry))
    err = from_rpc_error(exc.value)
    assert err.reason == common_pb2.ERROR_REASON_LOAD_FAILED  # the server's failure (HTTP 500), not the client's
    assert "does not match its digest" in err.message and tiny_in_registry.digest in err.message
    assert not (cache_dir / blob_name(tiny_in_registry.digest)).exists() and leftovers(cache_dir) == set()
    assert not (await stub.GetStatus(runner_pb2.GetStatusRequest())).instances


async def test_a_cancelled_load_stops_its_fetch(
    registry_addr: str, tiny_in_registry: TinyGGUF, cache_dir: Path
) -> None:
    inner = RegistryBlobReader(registry_addr)
    slow = CountingReader(inner, delay=0.05)
    runner = Runner("far-runner", FakeProbe(), BlobCache(cache_dir, slow))
    try:
        spec = LoadSpec(f"{ELSEWHERE}/x", num_ctx=128, model_digest=tiny_in_registry.digest)
        task = asyncio.create_task(runner.load("far", spec))
        # Reported while it fetches, with the progress of the bytes written.
        assert await eventually(lambda: any(s.load_progress > 0 for s in runner.status()))
        assert [s.instance_id for s in runner.status()] == ["far"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runner.status() == []
        assert await eventually(lambda: _unlocked(cache_dir))
        partial = cache_dir / f"{blob_name(tiny_in_registry.digest)}-partial"
        assert MiB <= partial.stat().st_size < tiny_in_registry.size
    finally:
        await runner.unload_all()
        await inner.close()


async def test_an_unreachable_registry_fails_the_load(cache_dir: Path) -> None:
    reader = RegistryBlobReader(f"127.0.0.1:{closed_port()}")
    runner = Runner("far-runner", FakeProbe(), BlobCache(cache_dir, reader))
    try:
        with pytest.raises(CorralError) as err:
            await runner.load("far", LoadSpec(f"{ELSEWHERE}/x", model_digest="sha256:" + "ef" * 32))
    finally:
        await reader.close()
    assert err.value.reason == common_pb2.ERROR_REASON_LOAD_FAILED and "unreachable" in err.value.message
    assert runner.status() == []


async def test_an_adapter_is_fetched_by_digest(
    registry: Registry, cache: BlobCache, reader: CountingReader, tmp_path: Path
) -> None:
    """The scheduler names adapters by digest only: the runner fetches them like models."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=256).path
    lora = write_tiny_lora(tmp_path / "lora.gguf")
    lora_digest = await put(registry, lora.read_bytes())
    runner = Runner("far-runner", FakeProbe(), cache)
    spec = LoadSpec(str(model), num_ctx=64, adapters=(("", 1.0),), adapter_digests=(lora_digest,))
    try:
        await runner.load("lora", spec)
        params = SamplingParams(temperature=0, num_predict=1)
        gen = GenerateSpec(prompt_tokens=(1, 260, 261, 262), params=params, top_logprobs=20)
        r = await collect(runner.generate("lora", gen))
    finally:
        await runner.unload_all()
    assert reader.offsets == [0]  # only the adapter: the model's path is readable here
    assert (cache.root / blob_name(lora_digest)).read_bytes() == lora.read_bytes()
    top = next(p for e in r.events for p in e.logprobs).top
    fetched = np.array(sorted((t.token_id, t.logprob) for t in top))
    assert np.allclose(fetched, await first_logprobs(model, ((str(lora), 1.0),)), atol=1e-4)
