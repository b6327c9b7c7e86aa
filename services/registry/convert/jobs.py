"""Conversion and quantization as create steps: blocking work in a thread, progress as events,
and the result published as a blob atomically.

Outputs are written to a hidden temp file in the blobs directory (".tmp-…",
which Store.prepare removes after a crash), fsynced, hashed, checked with the
bounded GGUF reader, and only then renamed to blobs/sha256-<hex>.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.registry.convert import convert
from services.registry.convert.quantize import estimated_size, quantize
from services.registry.digests import from_hex
from services.registry.gguf_meta import read_gguf_info

if TYPE_CHECKING:
    from services.registry.core import Registry

_EVERY = 0.5  # seconds between progress events
Event = tuple[int, int]  # (completed, total)


def _publish(blobs_dir: Path, tmp: Path) -> tuple[str, int, bool]:
    """Hash, fsync and verify `tmp`, then rename it to its blob name: (digest, size, created)."""
    h = hashlib.sha256()
    with tmp.open("rb+") as f:
        os.fchmod(f.fileno(), 0o644)
        os.fsync(f.fileno())
        while chunk := f.read(1 << 20):
            h.update(chunk)
        size = f.tell()
    read_gguf_info(tmp)  # the bounded reader must accept what we publish
    digest = from_hex(h.hexdigest())
    path = blobs_dir / f"sha256-{h.hexdigest()}"
    if path.exists():
        tmp.unlink()
        return digest, size, False
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(blobs_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return digest, size, True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class BlobJob:
    """Runs `work(tmp_path, report)` in a thread; `run()` yields progress, then digest/size/created are set."""

    def __init__(self, blobs_dir: Path, work: Callable[[Path, Callable[[int, int], None]], Any]) -> None:
        self.blobs_dir, self.work = blobs_dir, work
        self.digest, self.size, self.created = "", 0, False

    async def run(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        last = 0.0

        def report(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= _EVERY or done >= total:
                last = now
                loop.call_soon_threadsafe(events.put_nowait, (done, total))

        fd, name = tempfile.mkstemp(dir=self.blobs_dir, prefix=".tmp-convert-")
        os.close(fd)
        tmp = Path(name)

        def body() -> tuple[str, int, bool]:
            self.work(tmp, report)
            return _publish(self.blobs_dir, tmp)

        task = asyncio.ensure_future(asyncio.to_thread(body))
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            self.digest, self.size, self.created = task.result()
        finally:
            if not task.done():
                # A cancelled create: the thread cannot be stopped, so let it finish, then clean up.
                task.add_done_callback(lambda _: _remove(tmp))
            else:
                _remove(tmp)


def stage(registry: Registry, files: dict[str, str], into: Path) -> None:
    """Lay the uploaded blobs out as a model directory of symlinks (names were validated)."""
    for rel, digest in files.items():
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(registry.store.blob_path(digest))


def convert_job(registry: Registry, model_dir: Path) -> BlobJob:
    return BlobJob(registry.store.blobs_dir, lambda out, report: convert(model_dir, out, "f16", report))


def quantize_job(registry: Registry, src: Path, src_type: str, dst_type: str) -> BlobJob:
    total = estimated_size(src.stat().st_size, src_type, dst_type)

    def work(out: Path, report: Callable[[int, int], None]) -> None:
        done = False

        def poll() -> None:  # llama.cpp reports no progress: watch the output grow
            while not done:
                with contextlib.suppress(OSError):
                    report(min(out.stat().st_size, total - 1), total)
                time.sleep(_EVERY)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            quantize(src, out, dst_type)
        finally:
            done = True
            watcher.join()
        report(total, total)

    return BlobJob(registry.store.blobs_dir, work)
