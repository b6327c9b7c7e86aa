"""Pull and push over OCI distribution v2, with Ollama's progress statuses."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from services.registry import metrics
from services.registry.create import Progress
from services.registry.manifest import Layer, Manifest, ManifestError
from services.registry.names import ModelName
from services.registry.remote import Remote, invalid, parse_remote_name, remote_error

if TYPE_CHECKING:
    from services.registry.core import Registry

PROGRESS_INTERVAL = 0.06  # Ollama reports every 60 ms
UPLOAD_CHUNK = 64 << 20  # larger blobs are uploaded in PATCH chunks of this size


def _unique(manifest: Manifest) -> list[Layer]:
    seen: dict[str, Layer] = {}
    for layer in (*manifest.layers, manifest.config):
        seen.setdefault(layer.digest, layer)
    return list(seen.values())


def _remote(registry: Registry, client: httpx.AsyncClient, name: ModelName, scheme: str, insecure: bool) -> Remote:
    hosts = registry.downloads.settings.redirect_hosts
    return Remote(client, name, scheme, insecure=insecure, redirect_hosts=hosts)


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


async def pull_model(registry: Registry, raw_name: str, insecure: bool) -> AsyncIterator[Progress]:
    name, scheme = parse_remote_name(raw_name, insecure)
    yield Progress("pulling manifest")
    async with httpx.AsyncClient(http2=False, trust_env=False) as client:
        remote = _remote(registry, client, name, scheme, insecure)
        data = await remote.get_manifest()
        try:
            manifest = Manifest.from_bytes(data)
        except ManifestError as exc:
            raise invalid(f"pull model manifest: {exc}") from None
        layers = _unique(manifest)
        done: dict[str, int] = {}
        jobs: dict[str, asyncio.Task[None]] = {}

        async def fetch(layer: Layer) -> None:
            async for completed in registry.downloads.download(remote, layer.digest, layer.size, PROGRESS_INTERVAL):
                done[layer.digest] = completed

        for layer in layers:
            if await registry.stat_blob(layer.digest) == layer.size:
                done[layer.digest] = layer.size  # already here: skipped
            else:
                jobs[layer.digest] = asyncio.create_task(fetch(layer))
        reported: dict[str, int] = {}
        try:
            while True:
                for layer in layers:
                    completed = done.get(layer.digest, -1)
                    if reported.get(layer.digest) != completed:
                        reported[layer.digest] = completed
                        yield Progress(f"pulling {_short(layer.digest)}", layer.digest, layer.size, max(completed, 0))
                pending = [t for t in jobs.values() if not t.done()]
                failed = [t for t in jobs.values() if t.done() and t.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                if not pending:
                    break
                await asyncio.wait(pending, timeout=PROGRESS_INTERVAL, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in jobs.values():
                task.cancel()
            for task in jobs.values():
                with contextlib.suppress(BaseException):
                    await task
    yield Progress("verifying sha256 digest")  # each blob was hashed before it became visible
    yield Progress("writing manifest")
    removed = await registry.replace_manifest(name, data)
    if removed:
        yield Progress("removing unused layers")
    yield Progress("success")


async def _file_chunks(path: Path, start: int, end: int, sent: list[int]) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            chunk = await asyncio.to_thread(f.read, min(1 << 20, end - pos))
            if not chunk:
                raise remote_error(f"{path} shrank while it was being pushed")
            pos += len(chunk)
            sent[0] += len(chunk)
            metrics.PUSH_BYTES.inc(len(chunk))
            yield chunk


async def _upload(remote: Remote, path: Path, layer: Layer, sent: list[int]) -> None:
    if await remote.blob_exists(layer.digest):
        sent[0] = layer.size
        return
    location = await remote.start_upload()
    sep = "&" if "?" in location else "?"
    if layer.size <= UPLOAD_CHUNK:  # monolithic
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(layer.size)}
        body = _file_chunks(path, 0, layer.size, sent)
        await remote.send("PUT", f"{location}{sep}digest={layer.digest}", headers=headers, content=body)
        return
    for start in range(0, layer.size, UPLOAD_CHUNK):
        end = min(start + UPLOAD_CHUNK, layer.size)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
            "Content-Range": f"{start}-{end - 1}",
        }
        got = await remote.send("PATCH", location, headers=headers, content=_file_chunks(path, start, end, sent))
        location = remote.same_host(got.get("location") or location)
    sep = "&" if "?" in location else "?"
    await remote.send("PUT", f"{location}{sep}digest={layer.digest}", headers={"Content-Length": "0"}, content=b"")


async def push_model(registry: Registry, raw_name: str, insecure: bool) -> AsyncIterator[Progress]:
    name, scheme = parse_remote_name(raw_name, insecure)
    yield Progress("retrieving manifest")
    data = await registry.manifest_bytes(raw_name)
    manifest = Manifest.from_bytes(data)
    async with httpx.AsyncClient(trust_env=False) as client:
        remote = _remote(registry, client, name, scheme, insecure)
        for layer in _unique(manifest):
            path = registry.store.blob_path(layer.digest)
            if not await asyncio.to_thread(os.path.isfile, path):
                raise registry.broken(raw_name, layer.digest)
            sent = [0]
            status = f"pushing {_short(layer.digest)}"
            yield Progress(status, layer.digest, layer.size, 0)
            task = asyncio.create_task(_upload(remote, path, layer, sent))
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
                    yield Progress(status, layer.digest, layer.size, min(sent[0], layer.size))
                task.result()
            finally:
                task.cancel()
        yield Progress("pushing manifest")
        await remote.put_manifest(data)
    yield Progress("success")
