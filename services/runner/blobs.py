"""Model blobs on a runner that may be far from the store.

The scheduler names a blob by its path on the registry's host and by its digest. A runner
that shares the store (same host, a shared volume) opens that path as it is. Any other
runner keeps a verified copy in its cache directory (CORRAL_RUNNER_CACHE), fetched once
through the registry's ReadBlob stream:

    <cache>/sha256-<hex>           complete and verified; used without re-hashing
    <cache>/sha256-<hex>-partial   a fetch in progress or interrupted; resumed from its size
    <cache>/sha256-<hex>-lock      flock'd by the fetch; removed once the blob is published

Nothing reaches the final name before its sha256 matches. The cache is never evicted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from corral.errors import CorralError, from_rpc_error
from corral.grpc_server import channel
from corral.logs import fields
from corral.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.runner.progress import LoadProgress

log = logging.getLogger(__name__)
T = TypeVar("T")

OnBytes = Callable[[int, int], None]  # (bytes of the blob present, blob size)

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_READ_SIZE = 4 << 20
LOCK_POLL_S = 0.1


def _load_failed(message: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_LOAD_FAILED, message)


def _hex(digest: str) -> str:
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f"invalid digest {digest!r}")
    return m.group(1).lower()


def _readable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


class BlobReader(Protocol):
    source: str  # where blobs come from, for messages

    def read(self, digest: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """(blob size, next bytes) from `offset` on; failures are CorralError."""
        ...


class RegistryBlobReader:
    """BlobReader over RegistryService.ReadBlob; the channel opens at the first fetch."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.source = f"the registry at {address}"
        self._channel: grpc.aio.Channel | None = None

    async def read(self, digest: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        if self._channel is None:
            self._channel = channel(self.address)
        stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        call = stub.ReadBlob(registry_pb2.ReadBlobRequest(digest=digest, offset=offset))
        size = -1
        try:
            async for msg in call:
                size = msg.size_bytes if size < 0 else size  # only the first message carries it
                yield size, msg.chunk
        except grpc.RpcError as err:
            raise self._error(digest, err) from None
        finally:
            call.cancel()  # a consumer that stops early (or is cancelled) ends the stream

    def _error(self, digest: str, err: grpc.RpcError) -> CorralError:
        e = from_rpc_error(err)
        if e.reason == common_pb2.ERROR_REASON_BLOB_NOT_FOUND:
            return CorralError(e.reason, f"blob {digest} is not in {self.source}")
        if e.reason != common_pb2.ERROR_REASON_UNSPECIFIED:
            return _load_failed(f"fetching blob {digest} from {self.source}: {e.message}")
        # LOAD_FAILED, never UNAVAILABLE: the scheduler would take that for this runner being gone.
        if e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return _load_failed(f"cannot fetch blob {digest}: {self.source} is unreachable ({e.message})")
        return _load_failed(f"fetching blob {digest} from {self.source} failed: {e.code.name}: {e.message}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class _Worker:
    """One thread for a fetch's blocking file calls, run in order: a cancelled fetch's
    last write still completes before its file is closed and its lock released."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="blob-fetch")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def cleanup(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs fn after everything submitted so far. Awaited, so the caller sees the cache
        tidy, except in a cancelled task, which must not wait: fn then runs on its own."""
        done = asyncio.wrap_future(self._pool.submit(fn, *args))
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            await done

    def close(self) -> None:
        self._pool.shutdown(wait=False)  # queued calls still run


class _FileLock:
    """An flock on `<blob>-lock`: one fetch per blob, also across runner processes sharing the cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def try_acquire(self) -> bool:
        if self._fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self, published: bool) -> None:
        if self._fd < 0:
            return
        # Removed only once the blob exists: whoever holds the lock (even on this unlinked
        # file) checks for the blob first, so no two fetches can write the partial at once.
        if published:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


class _PartialFile:
    """The `-partial` file of a fetch and the sha256 of its bytes (blocking: worker thread only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._file: Any = None
        self._hash = hashlib.sha256()

    def open(self) -> None:
        """Opens or creates it and hashes what an earlier fetch left, which a resume appends to."""
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - closed by close()
        self._file.seek(0)
        buf = bytearray(_READ_SIZE)
        view = memoryview(buf)
        while n := self._file.readinto(buf):
            self._hash.update(view[:n])
            self.size += n

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """fsyncs and returns the hex sha256 of the whole file."""
        os.fsync(self._file.fileno())
        return self._hash.hexdigest()

    def restart(self) -> None:
        self._file.truncate(0)
        self._hash = hashlib.sha256()
        self.size = 0

    def publish(self, final: Path) -> None:
        os.replace(self.path, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Closes it; an empty one (nothing arrived) is not worth keeping for a resume."""
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.size == 0:
                self.remove()


@dataclass(eq=False)
class _Fetch:
    """One fetch of a blob, shared by every load waiting for it."""

    task: asyncio.Task[Path] | None = None
    watchers: list[OnBytes] = field(default_factory=list)

    def report(self, done: int, total: int) -> None:
        for watch in list(self.watchers):
            watch(done, total)


def _ignore(_done: int, _total: int) -> None:
    pass


def _retrieve(task: asyncio.Task[Path]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned fetch's error has no waiter left to see it


class BlobCache:
    """Local files for blobs: the store's own path when this host sees it, else a verified cached copy."""

    def __init__(self, root: Path, reader: BlobReader) -> None:
        self.root = root
        self.reader = reader
        self._fetches: dict[str, _Fetch] = {}

    async def ensure_local(self, path: str, digest: str, on_bytes: OnBytes | None = None) -> Path:
        """A local file with the blob's bytes, fetching (and verifying) it first when needed."""
        return await self.local_copy(path, digest) or await self.fetch(digest, on_bytes)

    async def local_copy(self, path: str, digest: str) -> Path | None:
        """The file to open without fetching, or None when the blob must be fetched.

        A readable `path` is used as is: the registry verified it and the store is shared,
        so there is nothing to copy or re-hash. Without a digest there is nothing to fetch
        by, so `path` comes back unchanged and the load reports it missing.
        """
        readable: bool = bool(path) and await asyncio.to_thread(_readable_file, path)
        if readable or not digest:
            return Path(path)
        cached = self.root / f"sha256-{_hex(digest)}"
        return cached if await asyncio.to_thread(cached.is_file) else None

    async def ensure_all(self, blobs: Sequence[tuple[str, str]], progress: LoadProgress) -> list[Path]:
        """ensure_local for each (path, digest), fetching the missing ones in order.

        `progress` learns how many fetches there are first, so each gets its own slice."""
        found = [await self.local_copy(path, digest) for path, digest in blobs]
        missing = [i for i, f in enumerate(found) if f is None]
        progress.fetching(len(missing))
        for k, i in enumerate(missing):
            found[i] = await self.fetch(blobs[i][1], functools.partial(progress.fetched, k))
        return [f for f in found if f is not None]

    async def fetch(self, digest: str, on_bytes: OnBytes | None = None) -> Path:
        """The cached copy, fetched now unless present. Concurrent callers share one fetch;
        when the last of them is cancelled the fetch stops and its partial file stays."""
        hex_ = _hex(digest)
        job = self._fetches.get(hex_)
        if job is None:
            job = self._fetches[hex_] = _Fetch()
            job.task = asyncio.create_task(self._run(hex_, job), name=f"fetch sha256:{hex_[:12]}")
            job.task.add_done_callback(_retrieve)
        assert job.task is not None
        watch = on_bytes or _ignore
        job.watchers.append(watch)
        try:
            return await asyncio.shield(job.task)
        finally:
            job.watchers.remove(watch)
            if not job.watchers and not job.task.done():  # the last waiter was cancelled
                job.task.cancel()
                self._forget(hex_, job)  # a new caller starts afresh (the lock orders the two)

    def _forget(self, hex_: str, job: _Fetch) -> None:
        if self._fetches.get(hex_) is job:
            del self._fetches[hex_]

    async def _run(self, hex_: str, job: _Fetch) -> Path:
        final = self.root / f"sha256-{hex_}"
        worker = _Worker()
        lock = _FileLock(self.root / f"sha256-{hex_}-lock")
        published = False
        try:
            # Polled: the holder may be another process, which no asyncio.Event reaches.
            while not await worker.run(lock.try_acquire):  # noqa: ASYNC110
                await asyncio.sleep(LOCK_POLL_S)
            if not await worker.run(final.is_file):  # that process may have finished it
                await self._download(hex_, final, worker, job.report)
            published = True
            return final
        except OSError as err:
            raise _load_failed(f"runner cache {self.root}: {err}") from err
        finally:
            await worker.cleanup(lock.release, published)
            worker.close()
            self._forget(hex_, job)

    async def _download(self, hex_: str, final: Path, worker: _Worker, report: OnBytes) -> None:
        digest = f"sha256:{hex_}"
        part = _PartialFile(final.with_name(f"{final.name}-partial"))
        t0 = time.monotonic()
        try:
            await worker.run(part.open)
            resumed_from = part.size
            got = await self._fill(digest, part, worker, report)
            if got != hex_ and resumed_from:
                # What an earlier fetch left may not be a prefix of this blob; one more try from zero.
                log.warning("resumed blob does not verify; fetching it again", extra=fields(digest=digest))
                await worker.run(part.restart)
                got = await self._fill(digest, part, worker, report)
            if got != hex_:
                await worker.run(part.remove)
                raise CorralError(
                    common_pb2.ERROR_REASON_DIGEST_MISMATCH,
                    f"blob {digest} fetched from {self.reader.source} does not match its digest "
                    f"(got {f'sha256:{got}' if got else 'another size'}); the registry's copy may be corrupt",
                )
            await worker.run(part.publish, final)
        finally:
            await worker.cleanup(part.close)
        log.info(
            "fetched blob",
            extra=fields(digest=digest, bytes=part.size, resumed_from=resumed_from, s=round(time.monotonic() - t0, 2)),
        )

    async def _fill(self, digest: str, part: _PartialFile, worker: _Worker, report: OnBytes) -> str:
        """Appends the rest of the blob to `part`; the hex sha256 of the result, or "" when its length is wrong."""
        size = await self._receive(digest, part, worker, report)
        got = await worker.run(part.finish)
        return got if part.size == size else ""

    async def _receive(self, digest: str, part: _PartialFile, worker: _Worker, report: OnBytes) -> int:
        size = -1
        async with contextlib.aclosing(self.reader.read(digest, part.size)) as stream:
            async for total, chunk in stream:
                if size < 0:
                    size = total
                    if part.size > size:
                        return size  # a stale partial longer than the blob: it cannot verify
                if part.size + len(chunk) > size:
                    raise _load_failed(f"{self.reader.source} sent more than the {size} bytes of blob {digest}")
                if chunk:
                    await worker.run(part.append, chunk)
                report(part.size, size)
        if part.size != size:
            raise _load_failed(f"the stream of blob {digest} from {self.reader.source} ended early")
        return size
