"""CORRAL_BATCH_INVARIANT=1 through the whole stack: greedy text is the same alone, next to
other requests, with and without speculative decoding (on by default in this mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, create_model, start_stack, stop_stack

CODE = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
EDIT = f"<start_of_turn>user\nRewrite this code, renaming w to width. Output the whole code.\n\n{CODE}<end_of_turn>\n"
OTHER = "<start_of_turn>user\nName three rivers in Europe.<end_of_turn>\n"
OPTS = {"temperature": 0, "num_predict": 48, "num_ctx": 1024}


@pytest.fixture(scope="module")
def invariant_stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("invariant"), CORRAL_BATCH_INVARIANT="1", CORRAL_NUM_PARALLEL="3")
    try:
        assert create_model(stack.url, "gemma", gemma_path)[-1] == {"status": "success"}
        yield stack
    finally:
        stop_stack(stack)


async def _generate(client: httpx.AsyncClient, prompt: str, **options: object) -> str:
    body = {"model": "gemma", "prompt": prompt + "<start_of_turn>model\n", "raw": True, "stream": False}
    r = await client.post("/api/generate", json={**body, "options": {**OPTS, **options}})
    assert r.status_code == 200, r.text
    return str(r.json()["response"])


def test_greedy_text_ignores_batching_and_speculation(invariant_stack: Stack) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=invariant_stack.url, timeout=300) as client:
            plain = await _generate(client, EDIT, speculative=False)  # alone, one row per step
            assert "width" in plain
            together = await asyncio.gather(
                _generate(client, EDIT),  # speculative by default in this mode
                _generate(client, OTHER, speculative=False),
                _generate(client, EDIT, speculative=False),
            )
            assert together[0] == plain and together[2] == plain
            assert together[1] == await _generate(client, OTHER)

    asyncio.run(run())
