"""Copy, delete, pruning, garbage collection and blob verification.

Blobs are shared between models, so a blob is removed only when no manifest
references it (layers or config). Deleting a model or overwriting a name
removes the blobs only the old manifest used, at once; garbage collection
removes other unreferenced blobs only after a grace period, because a create
or pull in another process may be about to reference them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry import metrics
from services.registry.digests import digest_from_filename, from_hex, parse_digest
from services.registry.download import PARTIAL_SUFFIX
from services.registry.manifest import Manifest
from services.registry.names import try_parse_name
from services.registry.store import Store

if TYPE_CHECKING:
    from services.registry.core import Registry

log = logging.getLogger(__name__)

CORRUPT_PREFIX = ".corrupt-"


def _invalid_name(message: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_MODEL_NAME, message)


def digests_of(manifest: Manifest) -> set[str]:
    return {manifest.config.digest, *(layer.digest for layer in manifest.layers)}


async def remove_unreferenced(registry: Registry, candidates: set[str]) -> list[str]:
    """Delete the candidate blobs no manifest references any more."""
    await registry.sync()
    referenced = await registry.index.referenced_digests()
    removed = sorted(d for d in candidates if d not in referenced)
    for digest in removed:
        await asyncio.to_thread(registry.store.blob_path(digest).unlink, True)
    if removed:
        log.info("removed %d unused blobs", len(removed))
    return removed


async def copy_model(registry: Registry, source: str, destination: str) -> None:
    if try_parse_name(source) is None:
        raise _invalid_name(f'source "{source}" is invalid')
    dest = try_parse_name(destination)
    if dest is None:
        raise _invalid_name(f'destination "{destination}" is invalid')
    try:
        data = await registry.manifest_bytes(source)
    except CorralError as err:
        if err.reason == common_pb2.ERROR_REASON_MODEL_NOT_FOUND:
            raise CorralError(err.reason, f'model "{source}" not found') from None
        raise
    await registry.replace_manifest(dest, data, prune=False)  # byte-identical: same digest


async def delete_model(registry: Registry, name: str) -> list[str]:
    parsed = try_parse_name(name)
    if parsed is None:
        raise _invalid_name(f'name "{name}" is invalid')
    async with registry.manifest_lock:
        entry = await asyncio.to_thread(registry.store.find_manifest, parsed)
        if entry is None:
            raise CorralError(common_pb2.ERROR_REASON_MODEL_NOT_FOUND, f"model '{name}' not found")
        data = await asyncio.to_thread(entry.path.read_bytes)
        await asyncio.to_thread(registry.store.delete_manifest, entry)
        await registry.index.remove([entry.key])
        try:
            old = digests_of(Manifest.from_bytes(data))
        except ValueError:
            old = set()
        return await remove_unreferenced(registry, old)


async def collect_garbage(registry: Registry, grace_seconds: float) -> list[str]:
    """Remove blobs (and stale partial downloads) nobody references, older than the grace period."""
    async with registry.manifest_lock:
        await registry.sync()
        referenced = await registry.index.referenced_digests()
        active = registry.downloads.active()
        resumable = await registry.index.partial_digests()
        removed = await asyncio.to_thread(_sweep, registry.store, referenced, active, resumable, grace_seconds)
    for digest in removed:
        await registry.index.clear_parts(digest)
    return removed


def _sweep(store: Store, referenced: set[str], active: set[str], resumable: set[str], grace: float) -> list[str]:
    cutoff = time.time() - grace
    removed: list[str] = []
    for path in store.blobs_dir.iterdir():
        name = path.name
        partial = name.endswith(PARTIAL_SUFFIX)
        digest = digest_from_filename(name.removesuffix(PARTIAL_SUFFIX))
        if digest is None or digest in referenced or digest in active:
            continue
        # An interrupted pull keeps its bytes for a day, so it can resume.
        grace_cutoff = cutoff - 23 * 3600 if partial and digest in resumable else cutoff
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < grace_cutoff:
                path.unlink()
                removed.append(digest)
    return removed


@dataclass
class VerifyReport:
    checked: int
    corrupt: list[str]
    broken_models: list[str]


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return from_hex(h.hexdigest())


async def verify_blobs(registry: Registry, digests: list[str], max_age: float | None = None) -> VerifyReport:
    """Re-hash blobs (all referenced ones when `digests` is empty); corrupt ones are moved aside.

    With `max_age`, a blob verified less than `max_age` seconds ago, whose size and
    mtime are unchanged, is skipped (the background pass).
    """
    await registry.sync()
    wanted = [parse_digest(d) for d in digests] or sorted(await registry.index.referenced_digests())
    corrupt: list[str] = []
    missing: list[str] = []
    checked = 0
    for digest in wanted:
        path = registry.store.blob_path(digest)
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            missing.append(digest)
            continue
        seen = await registry.index.get_verified(digest)
        fresh = seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns)
        if max_age is not None and fresh and seen is not None and time.time() - seen[2] < max_age:
            continue
        checked += 1
        if await asyncio.to_thread(_hash, path) == digest:
            await registry.index.put_verified(digest, st.st_size, st.st_mtime_ns, time.time())
            continue
        log.error("blob %s is corrupt; moved aside", digest)
        metrics.VERIFY_FAILURES.labels("stored").inc()
        corrupt.append(digest)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(CORRUPT_PREFIX + path.name))
    bad = set(corrupt) | set(missing)
    broken = sorted({m.full_name for m in await registry.list_models() if bad & {la.digest for la in m.layers}})
    return VerifyReport(checked, corrupt, broken)


async def background_verify(registry: Registry, interval: float, first_delay: float) -> None:
    """Verify every referenced blob once per `interval` seconds, forever."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            report = await verify_blobs(registry, [], max_age=interval)
            if report.corrupt or report.broken_models:
                log.error("verification found corrupt blobs %s; broken models %s", report.corrupt,
                          report.broken_models)  # fmt: skip
        except Exception:
            log.exception("background verification failed")
        await asyncio.sleep(interval)
