"""Blob downloads: parallel ranged parts into a `-partial` file, resumable across restarts.

A download writes `blobs/sha256-<hex>-partial` (full size, sparse) and keeps
its part table (offset, size, bytes written) in the index, so a later
download — in this process or after a crash — starts where the parts left
off. Nothing is trusted: the whole file is hashed before it is renamed to
its blob name, and a mismatch deletes it. Concurrent pulls of one digest
share one download; it is cancelled (and stays resumable) when the last
waiter leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import grpc
import httpx

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry import metrics
from services.registry.digests import blob_filename, from_hex
from services.registry.index import Index, PartState
from services.registry.redirects import RedirectHosts
from services.registry.remote import Refused, Remote, Throttled, raise_for_status, refused, remote_error
from services.registry.store import Store, _fsync_dir

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = "-partial"
_WRITE_BATCH = 4 << 20
_HASH_BLOCK = 4 << 20
_SYNC_EVERY = 64 << 20
_MAX_BACKOFF = 30.0
_MAX_RETRY_AFTER = 60.0  # a longer Retry-After is cut short; the try still counts
_T = TypeVar("_T")


@dataclass(frozen=True)
class TransferSettings:
    parallel: int = 4  # parts in flight per blob
    min_part: int = 16 << 20
    max_part: int = 1 << 30
    stall_seconds: float = 30.0  # no bytes for this long: drop the connection and retry
    retries: int = 6
    backoff_seconds: float = 0.5  # doubled per retry, capped at 30 s
    save_seconds: float = 0.5  # how often part progress is written to the index
    # Other hosts blob GETs may be redirected to (CORRAL_REDIRECT_HOSTS); empty: none.
    redirect_hosts: RedirectHosts = field(default_factory=RedirectHosts)


def split_parts(total: int, s: TransferSettings) -> list[PartState]:
    size = min(max(total // 16, s.min_part), s.max_part)
    return [PartState(i, total, off, min(size, total - off), 0) for i, off in enumerate(range(0, max(total, 1), size))]


def digest_mismatch(want: str, got: str) -> CorralError:
    message = f"digest mismatch, file must be downloaded again: want {want}, got {got}"
    return CorralError(common_pb2.ERROR_REASON_DIGEST_MISMATCH, message)


def blob_missing(digest: str) -> Refused:
    """The registry has no such blob (a 404), in the words Ollama uses for a missing manifest."""
    return refused(f"pull model blob {digest}: file does not exist", grpc.StatusCode.NOT_FOUND)


def shutting_down() -> CorralError:
    return remote_error("the registry is shutting down; pull again to resume", grpc.StatusCode.UNAVAILABLE)


class _Stalled(Exception):
    pass


class BlobDownload:
    def __init__(self, store: Store, index: Index, settings: TransferSettings, remote: Remote, digest: str,
                 total: int) -> None:  # fmt: skip
        self.store, self.index, self.settings = store, index, settings
        self.remote, self.digest, self.total = remote, digest, total
        self.parts: list[PartState] = []
        self.fetched = 0  # bytes received over the network by this download
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0
        self._written = asyncio.Event()  # wakes the hasher
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes from offset 0 already fed to _hash
        self._unsynced = 0  # bytes written since the last background fdatasync
        self._syncing: asyncio.Future[None] | None = None
        self.path = store.blob_path(digest)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    async def run(self) -> None:
        self.parts = await self._prepare()
        # Every blocking call on `fd` runs in this pool, so the fd is closed only after the
        # last of them returned, even when the download is cancelled mid-write.
        fd = await asyncio.to_thread(os.open, self.partial, os.O_RDWR)
        pool = ThreadPoolExecutor(self.settings.parallel + 2, thread_name_prefix="blob-io")
        saver = asyncio.create_task(self._save_periodically())
        hasher = asyncio.create_task(self._hash_frontier(pool, fd))
        try:
            sem = asyncio.Semaphore(self.settings.parallel)
            async with asyncio.TaskGroup() as tg:
                for part in self.parts:
                    if part.completed < part.size:
                        tg.create_task(self._run_part(pool, fd, part, sem))
            if self._syncing is not None:
                await self._syncing
            await self._io(pool, os.fsync, fd)  # most pages were written back while downloading
            self._written.set()
            await hasher  # hashing mostly kept pace with the download: little is left
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            for helper in (saver, hasher):
                helper.cancel()
                with contextlib.suppress(BaseException):
                    await helper  # retrieved: a failed save must not surface later as an unretrieved error
            # Finished even when cancelled again meanwhile, so Registry.close() can wait for them.
            await _to_the_end(asyncio.to_thread(_close_after, pool, fd))
            await _to_the_end(self.index.put_parts(self.digest, self.parts))
        got = from_hex(self._hash.hexdigest())
        if got != self.digest:
            await asyncio.to_thread(self.partial.unlink, True)
            await self.index.clear_parts(self.digest)
            metrics.VERIFY_FAILURES.labels("pull").inc()
            raise digest_mismatch(self.digest, got)
        await asyncio.to_thread(os.replace, self.partial, self.path)
        await asyncio.to_thread(_fsync_dir, self.path.parent)
        await self.index.clear_parts(self.digest)

    @staticmethod
    async def _io(pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _prepare(self) -> list[PartState]:
        parts = await self.index.get_parts(self.digest)
        try:
            size = self.partial.stat().st_size
        except FileNotFoundError:
            size = -1
        if parts and size == self.total and all(p.total == self.total for p in parts):
            log.info("resuming %s at %d of %d bytes", self.digest, sum(p.completed for p in parts), self.total)
            return parts
        await self.index.clear_parts(self.digest)
        with open(self.partial, "wb") as f:  # noqa: ASYNC230 - creating an empty sparse file
            f.truncate(self.total)
        parts = split_parts(self.total, self.settings)
        await self.index.put_parts(self.digest, parts)
        return parts

    async def _hash_frontier(self, pool: ThreadPoolExecutor, fd: int) -> None:
        """Hash the file's contiguous written prefix while the parts are still downloading."""
        buf = bytearray(_HASH_BLOCK)  # reused: a fresh 4 MiB bytes per read costs page faults
        while self._hashed < self.total:
            await self._written.wait()
            self._written.clear()
            end = self._hashed
            for p in self.parts:
                if p.offset <= end < p.offset + p.size or p.offset == end:
                    end = p.offset + p.completed
                    if p.completed < p.size:
                        break
            if end > self._hashed:
                await self._io(pool, self._hash_range, fd, buf, self._hashed, end)
                self._hashed = end

    def _hash_range(self, fd: int, buf: bytearray, start: int, end: int) -> None:
        view = memoryview(buf)
        while start < end:
            n = os.preadv(fd, [view[: min(len(buf), end - start)]], start)
            if not n:
                raise OSError(f"{self.partial} is shorter than expected")
            self._hash.update(view[:n])  # hashlib drops the GIL for large buffers
            start += n

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.save_seconds)
            await self.index.put_parts(self.digest, self.parts)

    async def _run_part(self, pool: ThreadPoolExecutor, fd: int, part: PartState, sem: asyncio.Semaphore) -> None:
        async with sem:
            tries = 0
            while part.completed < part.size:
                try:
                    await self._fetch(pool, fd, part)
                except _Stalled:
                    log.warning("part %d of %s stalled; retrying", part.part, self.digest)
                except Refused:
                    raise  # a refused redirect, denied access, a 404: asking again changes nothing
                except (CorralError, httpx.HTTPError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                        raise
                    tries += 1
                    if tries >= self.settings.retries:
                        raise remote_error(f"max retries exceeded: {exc}") from exc
                    log.warning("part %d of %s failed (%s); retry %d", part.part, self.digest, exc, tries)
                    await asyncio.sleep(self._pause(exc, tries))

    def _pause(self, exc: Exception, tries: int) -> float:
        """Exponential backoff, or the server's Retry-After when it asked for longer."""
        backoff = min(self.settings.backoff_seconds * 2 ** (tries - 1), _MAX_BACKOFF)
        asked = exc.retry_after if isinstance(exc, Throttled) else None
        return backoff if asked is None else min(max(backoff, asked), _MAX_RETRY_AFTER)

    async def _fetch(self, pool: ThreadPoolExecutor, fd: int, part: PartState) -> None:
        start = part.offset + part.completed
        end = part.offset + part.size - 1
        # identity: the raw bytes are written as they come, and a range of a compressed body is no range of the blob
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        stall = self.settings.stall_seconds
        loop = asyncio.get_running_loop()
        async with self.remote.open("GET", self.remote.blob_url(self.digest), headers=headers, timeout=None) as resp:
            if resp.status_code == 404:
                raise blob_missing(self.digest)
            await raise_for_status(resp)
            skip = start if resp.status_code == 200 else 0  # the server ignored Range
            pending: list[bytes] = []
            pending_size = 0
            left = part.size - part.completed
            try:
                # One deadline pushed forward per chunk: wait_for would start a task per chunk.
                async with asyncio.timeout(stall) as deadline:
                    # httpcore's own reads, not re-chunked: aiter_raw(n) copies every byte once more.
                    async for chunk in resp.aiter_raw():
                        self.fetched += len(chunk)
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        if len(chunk) > left - pending_size:
                            chunk = chunk[: left - pending_size]
                        if chunk:
                            pending.append(chunk)
                            pending_size += len(chunk)
                        if pending_size >= _WRITE_BATCH or pending_size == left:
                            await self._write(pool, fd, part, pending, pending_size)
                            left -= pending_size
                            pending, pending_size = [], 0
                            if not left:
                                break
                        deadline.reschedule(loop.time() + stall)
            except TimeoutError:
                raise _Stalled from None
            if pending:
                await self._write(pool, fd, part, pending, pending_size)
        if part.completed < part.size:
            raise remote_error(f"connection closed after {part.completed} of {part.size} bytes")

    async def _write(self, pool: ThreadPoolExecutor, fd: int, part: PartState, chunks: list[bytes], size: int) -> None:
        await self._io(pool, _pwrite_all, fd, chunks, part.offset + part.completed)
        part.completed += size  # only after the bytes are in the file
        metrics.PULL_BYTES.inc(size)
        self._written.set()
        self._unsynced += size
        if self._unsynced >= _SYNC_EVERY and (self._syncing is None or self._syncing.done()):
            if self._syncing is not None:
                self._syncing.result()  # a failed write-back fails the part
            # Write back while the network is busy, so the final fsync finds little left.
            self._unsynced = 0
            self._syncing = asyncio.ensure_future(self._io(pool, os.fdatasync, fd))


def _pwrite_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """One pwritev for the batch (no join, no copy); a short write finishes the rest."""
    done = os.pwritev(fd, chunks, offset)
    rest = b"".join(chunks)[done:] if done < sum(len(c) for c in chunks) else b""
    while rest:
        n = os.pwrite(fd, rest, offset + done)
        done, rest = done + n, rest[n:]


def _close_after(pool: ThreadPoolExecutor, fd: int) -> None:
    pool.shutdown(wait=True, cancel_futures=True)
    os.close(fd)


async def _to_the_end(aw: Awaitable[_T]) -> _T:
    """Await `aw` to its end even when cancelled meanwhile (any number of times), then re-raise
    the cancellation. asyncio.shield alone lets a second cancel leave it running unawaited."""
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.wait({fut})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        error = None if fut.cancelled() else fut.exception()  # retrieved, so never reported as lost
        raise asyncio.CancelledError from error
    return fut.result()


class Downloads:
    """The downloads in flight, shared by digest."""

    def __init__(self, store: Store, index: Index, settings: TransferSettings) -> None:
        self.store, self.index, self.settings = store, index, settings
        self._active: dict[str, BlobDownload] = {}
        self._closed = False
        self.fetched_total = 0  # network bytes of all downloads (for tests and benchmarks)

    async def close(self) -> None:
        """Cancel the downloads in flight and wait until each has saved its parts (they stay
        resumable), so nothing writes to the index after it is closed."""
        self._closed = True
        tasks = [dl.task for dl in self._active.values() if dl.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def download(self, remote: Remote, digest: str, total: int, interval: float = 0.06) -> AsyncIterator[int]:
        """Download a blob (or join the download in flight); yields bytes completed so far."""
        if self._closed:
            raise shutting_down()
        dl = self._active.get(digest)
        if dl is None or dl.task is None or dl.task.done():
            dl = BlobDownload(self.store, self.index, self.settings, remote, digest, total)
            dl.task = asyncio.create_task(dl.run())
            self._active[digest] = dl
            dl.task.add_done_callback(partial(self._finished, dl))
        task = dl.task
        dl.waiters += 1
        try:
            while not task.done():
                yield dl.completed
                await asyncio.wait({task}, timeout=interval)
            if task.cancelled() and self._closed:
                raise shutting_down()  # close() cancelled it, not this waiter's pull
            task.result()
            yield total
        finally:
            dl.waiters -= 1
            if dl.waiters == 0 and not task.done():
                task.cancel()  # nobody wants it any more; the parts stay resumable
                with contextlib.suppress(BaseException):
                    await asyncio.shield(asyncio.wait({task}))

    def active(self) -> set[str]:
        return set(self._active)

    def _finished(self, dl: BlobDownload, _task: object = None) -> None:
        self.fetched_total += dl.fetched
        if self._active.get(dl.digest) is dl:
            del self._active[dl.digest]
        if dl.task is not None and not dl.task.cancelled():
            dl.task.exception()  # mark retrieved; waiters re-raise it


def partial_name(digest: str) -> str:
    return blob_filename(digest) + PARTIAL_SUFFIX
