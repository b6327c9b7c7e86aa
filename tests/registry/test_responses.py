"""The stored-Responses core: bound, expiry, replace, delete, survival across reopen."""

from __future__ import annotations

from pathlib import Path

from services.registry.core import Registry
from services.registry.responses import ResponseLimits, ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_put_get_delete(tmp_path: Path) -> None:
    store = await ResponseStore.open(tmp_path / "r.db")
    try:
        await store.put("resp_a", '{"id": "resp_a"}', '[{"role": "user"}]')
        got = await store.get("resp_a")
        assert got is not None and got.response_json == '{"id": "resp_a"}' and got.input_json == '[{"role": "user"}]'
        assert await store.get("resp_b") is None
        assert await store.delete("resp_a") is True
        assert await store.delete("resp_a") is False
        assert await store.get("resp_a") is None
    finally:
        await store.close()


async def test_oldest_go_first_beyond_the_bound(tmp_path: Path) -> None:
    clock = Clock()
    store = await ResponseStore.open(tmp_path / "r.db", ResponseLimits(max_count=3, ttl_seconds=3600), clock)
    try:
        for i in range(5):
            clock.now += 1
            await store.put(f"resp_{i}", "{}", "[]")
        assert await store.count() == 3
        assert [await store.get(f"resp_{i}") is not None for i in range(5)] == [False, False, True, True, True]
    finally:
        await store.close()


async def test_expired_responses_are_not_served_and_are_dropped(tmp_path: Path) -> None:
    clock = Clock()
    store = await ResponseStore.open(tmp_path / "r.db", ResponseLimits(max_count=100, ttl_seconds=60), clock)
    try:
        await store.put("resp_old", "{}", "[]")
        clock.now += 59
        assert await store.get("resp_old") is not None
        clock.now += 2
        assert await store.get("resp_old") is None
        assert await store.delete("resp_old") is False  # expired is as good as unknown
        await store.put("resp_new", "{}", "[]")  # a write sweeps the expired rows
        assert await store.count() == 1
    finally:
        await store.close()


async def test_stored_responses_survive_a_registry_restart(models_dir: Path) -> None:
    reg = await Registry.open(models_dir, response_limits=ResponseLimits(max_count=10))
    try:
        assert reg.responses is not None
        await reg.responses.put("resp_keep", '{"x": 1}', "[]")
    finally:
        await reg.close()
    (models_dir / "index.db").unlink()  # the index is a cache; conversations are not in it
    reg = await Registry.open(models_dir)
    try:
        assert reg.responses is not None
        got = await reg.responses.get("resp_keep")
        assert got is not None and got.response_json == '{"x": 1}'
    finally:
        await reg.close()
