"""The SQLite index at <models>/index.db: a cache of what the files say.

The manifest and blob files are the truth. The index holds parsed manifests
and configs (keyed by the manifest's path and validated by its stat), the
layers for reference queries, and GGUF metadata per blob digest so a model's
weights are parsed once, not on every request. Deleting index.db is always
safe: it is rebuilt from the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from services.registry.gguf_meta import GGUFInfo
from services.registry.manifest import Manifest

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4  # 2: GGUF info carries special-token texts; 3: tensor sizes; 4: partials, verified
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY,
    host TEXT NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL, tag TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    config_json TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    file_size INTEGER NOT NULL,
    inode INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS layers (
    model_key TEXT NOT NULL REFERENCES models(key) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    from_name TEXT NOT NULL,
    PRIMARY KEY (model_key, position)
);
CREATE INDEX IF NOT EXISTS layers_by_digest ON layers(digest);
CREATE TABLE IF NOT EXISTS gguf_meta (digest TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partials (
    digest TEXT NOT NULL, part INTEGER NOT NULL, total INTEGER NOT NULL,
    offset INTEGER NOT NULL, size INTEGER NOT NULL, completed INTEGER NOT NULL,
    PRIMARY KEY (digest, part)
);
CREATE TABLE IF NOT EXISTS verified (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, verified_at REAL NOT NULL
);
"""
_TABLES = ("layers", "models", "gguf_meta", "partials", "verified")


@dataclass(frozen=True)
class Stamp:
    """What identifies one version of a manifest file without reading it."""

    mtime_ns: int
    file_size: int
    inode: int


@dataclass(frozen=True)
class IndexedModel:
    key: str
    host: str
    namespace: str
    model: str
    tag: str
    manifest_digest: str
    manifest: Manifest
    config: dict[str, Any]
    stamp: Stamp


class Index:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection is shared by all requests: a write is several statements
        # and one commit, which must not interleave with another write.
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Index:
        """Open the index, starting afresh when it is corrupt or from another schema version."""
        try:
            return await cls._open(path)
        except sqlite3.DatabaseError as exc:
            log.warning("index %s is unusable (%s); rebuilding it", path, exc)
            await asyncio.to_thread(_remove_db_files, path)
            return await cls._open(path)

    @classmethod
    async def _open(cls, path: Path) -> Index:
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the tail is harmless
            await db.execute("PRAGMA foreign_keys=ON")
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                await db.executescript("".join(f"DROP TABLE IF EXISTS {t};" for t in _TABLES))
                await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.executescript(_SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.close()

    # Models

    async def stamps(self) -> dict[str, Stamp]:
        async with self._db.execute("SELECT key, mtime_ns, file_size, inode FROM models") as cur:
            return {row[0]: Stamp(row[1], row[2], row[3]) for row in await cur.fetchall()}

    async def get(self, key: str) -> IndexedModel | None:
        async with self._db.execute(f"SELECT {_COLUMNS} FROM models WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return _row_to_model(row) if row else None

    async def all(self) -> list[IndexedModel]:
        async with self._db.execute(f"SELECT {_COLUMNS} FROM models") as cur:
            return [_row_to_model(row) for row in await cur.fetchall()]

    async def put(self, m: IndexedModel) -> None:
        async with self._write:
            await self._put(m)

    async def _put(self, m: IndexedModel) -> None:
        await self._db.execute("DELETE FROM models WHERE key = ?", (m.key,))
        await self._db.execute(
            f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * 12)})",
            (
                m.key, m.host, m.namespace, m.model, m.tag, m.manifest_digest,
                m.manifest.to_bytes().decode(), json.dumps(m.config),
                m.manifest.size, m.stamp.mtime_ns, m.stamp.file_size, m.stamp.inode,
            ),
        )  # fmt: skip
        await self._db.executemany(
            "INSERT INTO layers (model_key, position, media_type, digest, size, from_name) VALUES (?,?,?,?,?,?)",
            [
                (m.key, i, layer.media_type, layer.digest, layer.size, layer.from_)
                for i, layer in enumerate((m.manifest.config, *m.manifest.layers))
            ],
        )
        await self._db.commit()

    async def remove(self, keys: list[str]) -> None:
        async with self._write:
            await self._db.executemany("DELETE FROM models WHERE key = ?", [(k,) for k in keys])
            await self._db.commit()

    async def models_using(self, digest: str) -> list[str]:
        """Keys of the manifests that reference a blob (layer or config)."""
        async with self._db.execute("SELECT DISTINCT model_key FROM layers WHERE digest = ?", (digest,)) as cur:
            return [row[0] for row in await cur.fetchall()]

    # GGUF metadata

    async def get_gguf(self, digest: str) -> GGUFInfo | None:
        async with self._db.execute("SELECT info_json FROM gguf_meta WHERE digest = ?", (digest,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            return GGUFInfo.from_json(row[0])
        except (ValueError, TypeError, KeyError):
            return None  # written by an older version: parse again

    async def put_gguf(self, digest: str, info: GGUFInfo) -> None:
        async with self._write:
            await self._db.execute(
                "INSERT OR REPLACE INTO gguf_meta (digest, info_json) VALUES (?, ?)", (digest, info.to_json())
            )
            await self._db.commit()

    # Partial downloads: the byte ranges of a `-partial` file already written

    async def get_parts(self, digest: str) -> list[PartState]:
        sql = "SELECT part, total, offset, size, completed FROM partials WHERE digest = ? ORDER BY part"
        async with self._db.execute(sql, (digest,)) as cur:
            return [PartState(*row) for row in await cur.fetchall()]

    async def put_parts(self, digest: str, parts: list[PartState]) -> None:
        async with self._write:
            await self._db.executemany(
                "INSERT OR REPLACE INTO partials (digest, part, total, offset, size, completed) VALUES (?,?,?,?,?,?)",
                [(digest, p.part, p.total, p.offset, p.size, p.completed) for p in parts],
            )
            await self._db.commit()

    async def clear_parts(self, digest: str) -> None:
        async with self._write:
            await self._db.execute("DELETE FROM partials WHERE digest = ?", (digest,))
            await self._db.commit()

    async def partial_digests(self) -> set[str]:
        async with self._db.execute("SELECT DISTINCT digest FROM partials") as cur:
            return {row[0] for row in await cur.fetchall()}

    # References and verification

    async def referenced_digests(self) -> set[str]:
        async with self._db.execute("SELECT DISTINCT digest FROM layers") as cur:
            return {row[0] for row in await cur.fetchall()}

    async def get_verified(self, digest: str) -> tuple[int, int, float] | None:
        sql = "SELECT size, mtime_ns, verified_at FROM verified WHERE digest = ?"
        async with self._db.execute(sql, (digest,)) as cur:
            row = await cur.fetchone()
        return (row[0], row[1], row[2]) if row else None

    async def put_verified(self, digest: str, size: int, mtime_ns: int, when: float) -> None:
        async with self._write:
            await self._db.execute(
                "INSERT OR REPLACE INTO verified (digest, size, mtime_ns, verified_at) VALUES (?,?,?,?)",
                (digest, size, mtime_ns, when),
            )
            await self._db.commit()


@dataclass
class PartState:
    """One byte range of a download: [offset, offset + size), of which `completed` are written."""

    part: int
    total: int  # size of the whole blob
    offset: int
    size: int
    completed: int


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


_COLUMNS = (
    "key, host, namespace, model, tag, manifest_digest, manifest_json, config_json, size, mtime_ns, file_size, inode"
)


def _row_to_model(row: Any) -> IndexedModel:
    return IndexedModel(
        key=row[0],
        host=row[1],
        namespace=row[2],
        model=row[3],
        tag=row[4],
        manifest_digest=row[5],
        manifest=Manifest.from_bytes(row[6].encode()),
        config=json.loads(row[7]),
        stamp=Stamp(row[9], row[10], row[11]),
    )
