"""The registry core: resolve, list, create and blob uploads, without gRPC.

Blocking file work runs in threads (asyncio.to_thread). The index is a cache
that is checked against the manifest files' stat on every use, so models
written by another process (or by Ollama itself) show up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry import manage, metrics, transfer
from services.registry.create import CreateRequest, Progress, create_model
from services.registry.digests import from_hex, parse_digest
from services.registry.download import Downloads, TransferSettings
from services.registry.gguf_meta import GGUFInfo, read_gguf_info
from services.registry.index import Index, IndexedModel, Stamp
from services.registry.manifest import (
    MAX_MANIFEST_BYTES,
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ManifestError,
    parse_config,
)
from services.registry.model import Details, StoredModel, capabilities
from services.registry.names import ModelName, parse_name
from services.registry.responses import ResponseLimits, ResponseStore
from services.registry.show import ShowResult, show
from services.registry.store import ManifestFile, Store, blob_not_found

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20
MAX_TEXT_LAYER_BYTES = 8 << 20
_WRITE_BATCH = 1 << 20  # hand chunks to the writer thread in batches of at least this


@dataclass(frozen=True)
class BlobWrite:
    created: bool  # False when the blob already existed
    size: int


def model_not_found(name: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_MODEL_NOT_FOUND, f"model '{name}' not found")


class Registry:
    def __init__(
        self,
        store: Store,
        index: Index,
        transfer: TransferSettings | None = None,
        noprune: bool = False,
        responses: ResponseStore | None = None,
    ):
        self.store = store
        self.index = index
        self.responses = responses  # stored OpenAI Responses; opened by Registry.open
        self.noprune = noprune  # keep the layers an overwritten manifest no longer uses (OLLAMA_NOPRUNE)
        self.downloads = Downloads(store, index, transfer or TransferSettings())
        self.manifest_lock = asyncio.Lock()  # manifest writes and the blob removals that follow them
        self._sync_lock = asyncio.Lock()
        self._gguf_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(
        cls,
        root: Path,
        transfer: TransferSettings | None = None,
        noprune: bool = False,
        response_limits: ResponseLimits | None = None,
    ) -> Registry:
        """Open the store at `root`, creating it if needed, and bring the index up to date."""
        store = Store(root)
        await asyncio.to_thread(store.prepare)
        responses = await ResponseStore.open(store.root / "responses.db", response_limits)
        registry = cls(store, await Index.open(store.root / "index.db"), transfer, noprune, responses)
        await registry.sync()
        return registry

    async def close(self) -> None:
        """Stop the downloads in flight (their parts saved, resumable), then close the index."""
        await self.downloads.close()
        await self.index.close()
        if self.responses is not None:
            await self.responses.close()

    # Index maintenance

    async def sync(self) -> None:
        """Re-read the manifests whose files changed; forget the ones that are gone."""
        async with self._sync_lock:
            entries = await asyncio.to_thread(self.store.scan_manifests)
            stamps = await self.index.stamps()
            for entry in entries:
                if stamps.get(entry.key) != _stamp(entry):
                    await self._refresh(entry)
            present = {entry.key for entry in entries}
            gone = [key for key in stamps if key not in present]
            if gone:
                await self.index.remove(gone)

    async def _refresh(self, entry: ManifestFile) -> IndexedModel | None:
        try:
            indexed = await asyncio.to_thread(self._load, entry)
        except (OSError, ManifestError) as exc:
            log.warning("skipping unreadable manifest %s: %s", entry.path, exc)
            await self.index.remove([entry.key])
            return None
        await self.index.put(indexed)
        return indexed

    def _load(self, entry: ManifestFile) -> IndexedModel:
        with entry.path.open("rb") as f:
            st = os.fstat(f.fileno())  # the stamp of exactly the bytes we read
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest is too large")
        manifest = Manifest.from_bytes(data)
        try:
            config = parse_config(self.store.read_blob(manifest.config.digest, MAX_CONFIG_BYTES))
        except CorralError:
            config = {}  # a missing config only costs the details
        return _indexed(entry.key, entry.name, data, manifest, config, Stamp(st.st_mtime_ns, st.st_size, st.st_ino))

    async def save_manifest(self, name: ModelName, manifest: Manifest, config: dict[str, Any]) -> list[str]:
        return await self.replace_manifest(name, manifest.to_bytes(), config)

    async def replace_manifest(
        self, name: ModelName, data: bytes, config: dict[str, Any] | None = None, *, prune: bool = True
    ) -> list[str]:
        """Write manifest bytes as given; then drop the blobs only the old manifest used."""
        manifest = Manifest.from_bytes(data)
        if config is None:
            try:
                config = parse_config(await asyncio.to_thread(self.store.read_blob, manifest.config.digest,
                                                              MAX_CONFIG_BYTES))  # fmt: skip
            except (CorralError, ManifestError):
                config = {}
        async with self.manifest_lock:
            old = await asyncio.to_thread(self.store.find_manifest, name)
            old_digests: set[str] = set()
            if old is not None:
                with contextlib.suppress(OSError, ManifestError):
                    old_digests = manage.digests_of(Manifest.from_bytes(await asyncio.to_thread(old.path.read_bytes)))
            entry = await asyncio.to_thread(self.store.write_manifest, name, data)
            await self.index.put(_indexed(entry.key, entry.name, data, manifest, config, _stamp(entry)))
            stale = old_digests - manage.digests_of(manifest)
            if not stale or not prune or self.noprune:
                return []
            return await manage.remove_unreferenced(self, stale)

    async def manifest_bytes(self, name: str) -> bytes:
        entry = await asyncio.to_thread(self.store.find_manifest, parse_name(name))
        if entry is None:
            raise model_not_found(name)
        try:
            return await asyncio.to_thread(self.store.read_manifest_bytes, entry.path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise model_not_found(name) from None

    def broken(self, name: str, digest: str) -> CorralError:
        return CorralError(
            common_pb2.ERROR_REASON_BLOB_NOT_FOUND,
            f'model "{name}" is broken: blob "{digest}" is missing or corrupt; pull or create it again',
        )

    # Queries

    async def resolve(self, name: str) -> StoredModel:
        """Everything about one model; MODEL_NOT_FOUND / INVALID_MODEL_NAME."""
        parsed = parse_name(name)
        entry = await asyncio.to_thread(self.store.find_manifest, parsed)
        if entry is None:
            raise model_not_found(name)
        indexed = await self.index.get(entry.key)
        if indexed is None or indexed.stamp != _stamp(entry):
            indexed = await self._refresh(entry)
            if indexed is None:
                raise model_not_found(name)
        return await self._full(indexed)

    async def list_models(self) -> list[StoredModel]:
        """All models, newest first, with manifest and config fields only."""
        await self.sync()
        models = [self._summary(m) for m in await self.index.all()]
        models.sort(key=lambda m: m.name)
        models.sort(key=lambda m: m.modified_at_ns, reverse=True)
        return models

    def _summary(self, m: IndexedModel) -> StoredModel:
        name = ModelName(m.host, m.namespace, m.model, m.tag)
        weights = [la for la in m.manifest.layers if la.media_type == MEDIA_MODEL]
        model = weights[-1] if weights else None  # Ollama: the last model layer wins
        return StoredModel(
            name=name.display_shortest(),
            full_name=name.full(),
            manifest_digest=m.manifest_digest,
            size=m.manifest.size,
            modified_at_ns=m.stamp.mtime_ns,
            details=Details.from_config(m.config, model.from_ if model else ""),
            layers=m.manifest.layers,
            config=m.config,
            model_digest=model.digest if model else "",
            model_path=str(self.store.blob_path(model.digest)) if model else "",
        )

    async def _full(self, m: IndexedModel) -> StoredModel:
        base = self._summary(m)
        if base.model_digest and not await asyncio.to_thread(os.path.isfile, base.model_path):
            raise self.broken(base.name, base.model_digest)  # never serve a model without its weights
        texts = await asyncio.to_thread(self._read_texts, m.manifest)
        gguf = await self.gguf_info(base.model_digest) if base.model_digest else None
        layers = m.manifest.layers
        blobs = {
            kind: tuple((la.digest, str(self.store.blob_path(la.digest))) for la in layers if la.media_type == kind)
            for kind in (MEDIA_ADAPTER, MEDIA_PROJECTOR)
        }
        projector_paths = tuple(path for _digest, path in blobs[MEDIA_PROJECTOR])
        drafts = [la for la in layers if la.media_type == MEDIA_DRAFT]
        draft = (drafts[0].digest, str(self.store.blob_path(drafts[0].digest)), drafts[0].size) if drafts else None
        return replace(
            base,
            **texts,
            adapters=blobs[MEDIA_ADAPTER],
            draft=draft,
            projector_paths=projector_paths,
            gguf=gguf,
            capabilities=capabilities(gguf, texts["template"], bool(projector_paths)),
        )

    def _read_texts(self, manifest: Manifest) -> dict[str, Any]:
        out: dict[str, Any] = {"template": "", "system": "", "parameters": {}, "licenses": (), "messages": ()}
        kinds = (MEDIA_TEMPLATE, MEDIA_PROMPT, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_LICENSE, MEDIA_MESSAGES)
        for layer in manifest.layers:
            if layer.media_type not in kinds:
                continue
            text = self.store.read_blob(layer.digest, MAX_TEXT_LAYER_BYTES).decode("utf-8", errors="replace")
            if layer.media_type == MEDIA_MESSAGES:
                out["messages"] = _messages(text)
            elif layer.media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
                out["template"] = text
            elif layer.media_type == MEDIA_SYSTEM:
                out["system"] = text
            elif layer.media_type == MEDIA_LICENSE:
                out["licenses"] = (*out["licenses"], text)
            else:
                try:
                    params = json.loads(text)
                except ValueError:
                    params = None
                out["parameters"] = params if isinstance(params, dict) else {}
        return out

    async def gguf_info(self, digest: str) -> GGUFInfo:
        """GGUF metadata of a blob, parsed once and cached in the index."""
        digest = parse_digest(digest)
        cached = await self.index.get_gguf(digest)
        if cached is not None:
            return cached
        async with self._gguf_locks.setdefault(digest, asyncio.Lock()):
            cached = await self.index.get_gguf(digest)
            if cached is not None:
                return cached
            path = self.store.blob_path(digest)
            if not await asyncio.to_thread(path.is_file):
                raise blob_not_found(digest)
            info = await asyncio.to_thread(read_gguf_info, path)
            await self.index.put_gguf(digest, info)
            return info

    # Blobs

    async def stat_blob(self, digest: str) -> int | None:
        """Size of a blob, or None when it is absent; INVALID_DIGEST for a bad digest."""
        return await asyncio.to_thread(self.store.blob_size, parse_digest(digest))

    async def write_blob(self, digest: str, chunks: AsyncIterable[bytes]) -> BlobWrite:
        """Store a blob from a byte stream, verified against `digest` before it becomes visible.

        An existing blob is kept and the stream drained. A mismatch raises
        DIGEST_MISMATCH and leaves nothing behind.
        """
        digest = parse_digest(digest)
        size = await self.stat_blob(digest)
        if size is not None:
            async for _ in chunks:
                pass
            return BlobWrite(created=False, size=size)
        writer = await asyncio.to_thread(self.store.open_blob, digest)
        try:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _WRITE_BATCH:
                    await asyncio.to_thread(writer.write, b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                await asyncio.to_thread(writer.write, b"".join(pending))
            size = await asyncio.to_thread(writer.commit)
        except BaseException:
            writer.abort()  # synchronous: must run even when the task is being cancelled
            raise
        return BlobWrite(created=True, size=size)

    # Create

    async def create(self, req: CreateRequest) -> AsyncIterator[Progress]:
        """Create (or replace) a model; yields Ollama's progress statuses."""
        async for event in create_model(self, req):
            yield event

    # Management and transfers (see manage.py and transfer.py)

    async def show(self, name: str, *, verbose: bool = False, system: str | None = None,
                   options: dict[str, Any] | None = None) -> ShowResult:  # fmt: skip
        return show(await self.resolve(name), self.store.blob_path, verbose=verbose, system=system,
                    options=options or {})  # fmt: skip

    async def copy(self, source: str, destination: str) -> None:
        await manage.copy_model(self, source, destination)

    async def delete(self, name: str) -> list[str]:
        return await manage.delete_model(self, name)

    def pull(self, name: str, insecure: bool = False) -> AsyncIterator[Progress]:
        return metrics.outcome(transfer.pull_model(self, name, insecure), metrics.PULLS)

    def push(self, name: str, insecure: bool = False) -> AsyncIterator[Progress]:
        return metrics.outcome(transfer.push_model(self, name, insecure), metrics.PUSHES)

    async def verify(self, digests: list[str]) -> manage.VerifyReport:
        return await manage.verify_blobs(self, digests)

    async def collect_garbage(self, grace_seconds: float) -> list[str]:
        return await manage.collect_garbage(self, grace_seconds)

    async def read_blob(self, digest: str, offset: int = 0, chunk: int = 1 << 20) -> AsyncIterator[tuple[int, bytes]]:
        """(blob size, next bytes) from `offset` on; BLOB_NOT_FOUND when absent."""
        path = self.store.blob_path(parse_digest(digest))
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise blob_not_found(digest) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            await asyncio.to_thread(f.seek, min(offset, size))
            sent = False
            while data := await asyncio.to_thread(f.read, chunk):
                sent = True
                yield size, data
            if not sent:
                yield size, b""


def _messages(text: str) -> tuple[tuple[str, str], ...]:
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(items, list):
        return ()
    return tuple((str(m.get("role", "")), str(m.get("content", ""))) for m in items if isinstance(m, dict))


def _stamp(entry: ManifestFile) -> Stamp:
    return Stamp(entry.mtime_ns, entry.file_size, entry.inode)


def _indexed(
    key: str, name: ModelName, data: bytes, manifest: Manifest, config: dict[str, Any], stamp: Stamp
) -> IndexedModel:
    return IndexedModel(
        key=key,
        host=name.host,
        namespace=name.namespace,
        model=name.model,
        tag=name.tag,
        manifest_digest=from_hex(hashlib.sha256(data).hexdigest()),
        manifest=manifest,
        config=config,
        stamp=stamp,
    )
