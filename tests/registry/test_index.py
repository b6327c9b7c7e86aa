from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

from services.registry.core import Registry
from services.registry.create import CreateRequest
from tests.ggufs import TinyGGUF
from tests.registry.helpers import create, remove_index, upload, write_file


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_index_is_rebuilt_from_files(models_dir: Path, tiny: TinyGGUF) -> None:
    reg = await Registry.open(models_dir)
    try:
        digest = await upload(reg, tiny)
        await create(reg, CreateRequest(name="one", files={"m.gguf": digest}, system="hi"))
        await reg.resolve("one")  # caches the GGUF metadata
        before = [m.name for m in await reg.list_models()]
    finally:
        await reg.close()
    db = models_dir / "index.db"
    assert _rows(db, "SELECT count(*) FROM gguf_meta") == [(1,)]

    remove_index(models_dir)
    reg = await Registry.open(models_dir)
    try:
        assert _rows(db, "SELECT key FROM models") == [("registry.ollama.ai/library/one/latest",)]
        assert [m.name for m in await reg.list_models()] == before
        assert (await reg.resolve("one")).system == "hi"
        assert await reg.index.models_using(digest) == ["registry.ollama.ai/library/one/latest"]
    finally:
        await reg.close()


async def test_corrupt_index_is_replaced(models_dir: Path, tiny: TinyGGUF) -> None:
    write_file(models_dir / "index.db", b"this is not sqlite" * 100)
    reg = await Registry.open(models_dir)
    try:
        assert await reg.list_models() == []
    finally:
        await reg.close()


async def test_changes_made_by_others_are_seen(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    await create(registry, CreateRequest(name="a", files={"m.gguf": digest}))
    manifests = registry.store.manifests_dir / "registry.ollama.ai" / "library"
    # Another process copies a model and deletes the original.
    shutil.copytree(manifests / "a", manifests / "b")
    shutil.rmtree(manifests / "a")
    assert [m.name for m in await registry.list_models()] == ["b:latest"]
    # ... and rewrites it with a system prompt.
    system = b"be brief"
    system_digest = "sha256:" + hashlib.sha256(system).hexdigest()
    (registry.store.blobs_dir / system_digest.replace(":", "-")).write_bytes(system)
    path = manifests / "b" / "latest"
    manifest = json.loads(path.read_bytes())
    manifest["layers"].append(
        {"mediaType": "application/vnd.ollama.image.system", "digest": system_digest, "size": len(system)}
    )
    path.write_text(json.dumps(manifest))
    assert (await registry.resolve("b")).system == "be brief"
