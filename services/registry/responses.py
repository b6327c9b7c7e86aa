"""Stored OpenAI Responses (`store: true`): what `previous_response_id` continues from.

They live in their own SQLite file, `<models>/responses.db`, not in index.db: the index is a
cache that is dropped and rebuilt from the files, and a conversation is not in the files.
The store is bounded: at most `max_count` responses, each kept for `ttl_seconds`; the oldest
go first when a new one would pass the bound, and an expired one is never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    response_json TEXT NOT NULL,
    input_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses(created_at);
"""


@dataclass(frozen=True)
class ResponseLimits:
    max_count: int = 10000
    ttl_seconds: float = 30 * 86400.0  # OpenAI keeps stored responses 30 days


@dataclass(frozen=True)
class StoredResponse:
    id: str
    response_json: str  # the Response object as served
    input_json: str  # the input items it answered, previous responses' included
    created_at: float


class ResponseStore:
    def __init__(
        self, db: aiosqlite.Connection, limits: ResponseLimits, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self.limits = limits
        self._clock = clock
        self._write = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, limits: ResponseLimits | None = None, clock: Callable[[], float] = time.time
    ) -> ResponseStore:
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.executescript(_SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, limits or ResponseLimits(), clock)

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.close()

    async def put(self, id: str, response_json: str, input_json: str) -> None:
        """Store (or replace) a response, then drop the expired ones and the oldest beyond the bound."""
        now = self._clock()
        async with self._write:
            await self._db.execute(
                "INSERT OR REPLACE INTO responses (id, response_json, input_json, created_at) VALUES (?, ?, ?, ?)",
                (id, response_json, input_json, now),
            )
            await self._db.execute("DELETE FROM responses WHERE created_at <= ?", (now - self.limits.ttl_seconds,))
            await self._db.execute(
                "DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses ORDER BY created_at DESC, rowid DESC"
                " LIMIT ?)",
                (max(0, self.limits.max_count),),
            )
            await self._db.commit()

    async def get(self, id: str) -> StoredResponse | None:
        async with self._db.execute(
            "SELECT id, response_json, input_json, created_at FROM responses WHERE id = ? AND created_at > ?",
            (id, self._clock() - self.limits.ttl_seconds),
        ) as cur:
            row = await cur.fetchone()
        return StoredResponse(row[0], row[1], row[2], row[3]) if row else None

    async def delete(self, id: str) -> bool:
        """Forget a response; False when there was none (or it had expired)."""
        now = self._clock()
        async with self._write:
            cur = await self._db.execute(
                "DELETE FROM responses WHERE id = ? AND created_at > ?", (id, now - self.limits.ttl_seconds)
            )
            await self._db.commit()
        return cur.rowcount > 0

    async def count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM responses") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
