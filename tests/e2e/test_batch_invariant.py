"""CORRAL_BATCH_INVARIANT=1 through the whole stack: greedy text is the same alone, next to
other requests, with and without speculative decoding (on by default in this mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.assets import gemma_digest
from tests.stack import Stack, create_model, free_port, start_stack, stop_stack

CODE = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
EDIT = f"<start_of_turn>user\nRewrite this code, renaming w to width. Output the whole code.\n\n{CODE}<end_of_turn>\n"
OTHER = "<start_of_turn>user\nName three rivers in Europe.<end_of_turn>\n"
OPTS = {"temperature": 0, "num_predict": 48, "num_ctx": 1024}
RUNNER_METRICS = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def invariant_stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("invariant"),
        CORRAL_BATCH_INVARIANT="1",
        CORRAL_NUM_PARALLEL="3",
        CORRAL_RUNNER_METRICS=RUNNER_METRICS,
    )
    try:
        assert create_model(stack.url, "gemma", gemma_path)[-1] == {"status": "success"}
        yield stack
    finally:
        stop_stack(stack)


async def _generate(client: httpx.AsyncClient, prompt: str, model: str = "gemma", **options: object) -> str:
    body = {"model": model, "prompt": prompt + "<start_of_turn>model\n", "raw": True, "stream": False}
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


def _draft_tokens() -> dict[str, float]:
    url = f"http://{RUNNER_METRICS}/metrics"
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text)
        for s in family.samples
        if s.name == "corral_runner_draft_tokens_total" and s.labels.get("source") == "model"
    }


def test_a_draft_model_drafts_and_keeps_the_text(invariant_stack: Stack) -> None:
    """`draft_files` (here Gemma drafting for itself) adds a DRAFT layer; the runner loads it next
    to the model, speculation is on by default, and the greedy text is the model's alone."""
    url = invariant_stack.url
    body = {"model": "drafted", "from": "gemma", "draft_files": {"draft.gguf": gemma_digest()}, "stream": False}
    r = httpx.post(url + "/api/create", json=body, timeout=300)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    show = httpx.post(url + "/api/show", json={"model": "drafted"}, timeout=30).json()
    assert "\nDRAFT " in show["modelfile"]
    bad = {**body, "model": "bad", "draft_files": {"a.gguf": gemma_digest(), "b.gguf": gemma_digest()}}
    r = httpx.post(url + "/api/create", json=bad, timeout=30)
    assert r.status_code == 400 and "only one draft model" in r.json()["error"]
    modelfile = f"FROM gemma\nDRAFT @{gemma_digest()}\n"  # a DRAFT naming an uploaded blob
    r = httpx.post(url + "/api/create", json={"model": "mf", "modelfile": modelfile, "stream": False}, timeout=300)
    assert r.status_code == 200, r.text
    assert "\nDRAFT " in httpx.post(url + "/api/show", json={"model": "mf"}, timeout=30).json()["modelfile"]
    twice = {"model": "bad", "modelfile": modelfile + "DRAFT ./other.gguf\n", "stream": False}
    r = httpx.post(url + "/api/create", json=twice, timeout=30)
    assert r.status_code == 400 and "only one DRAFT line" in r.json()["error"]

    async def run() -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return await _generate(client, EDIT, speculative=False), await _generate(client, EDIT, model="drafted")

    before = _draft_tokens()
    plain, drafted = asyncio.run(run())
    after = _draft_tokens()
    assert drafted == plain
    assert after.get("accepted", 0) - before.get("accepted", 0) > 10
    sizes = {m["name"]: m["size"] for m in httpx.get(url + "/api/ps", timeout=30).json()["models"]}
    assert sizes["drafted:latest"] > 1.5 * sizes["gemma:latest"]  # the draft model's weights and KV too
