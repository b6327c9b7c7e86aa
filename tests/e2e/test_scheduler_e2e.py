"""The scheduler with the real CPU runner and the real Gemma model, through REST."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, create_model, start_stack, stop_stack

OPTS = {"temperature": 0, "num_predict": 4, "num_ctx": 1024}
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


def gen(stack: Stack, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "prompt": "Hello", "stream": False, "options": OPTS, **extra}
    return httpx.post(stack.url + "/api/generate", json=body, timeout=300)


def ps(stack: Stack) -> list[dict]:
    return httpx.get(stack.url + "/api/ps", timeout=10).json()["models"]


def wait_until(check, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def twin_gguf(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma with 32 padding bytes appended: same weights, another digest, so a second model."""
    twin = tmp_path_factory.mktemp("twin") / "twin.gguf"
    shutil.copyfile(gemma_path, twin)
    with twin.open("ab") as f:
        f.write(b"\0" * 32)
    return twin


@pytest.fixture(scope="module")
def one_model_stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path, twin_gguf: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("one"), CORRAL_MAX_LOADED_MODELS="1", CORRAL_KEEP_ALIVE="10m")
    try:
        create_model(s.url, "first", gemma_path)
        create_model(s.url, "second", twin_gguf)
        yield s
    finally:
        stop_stack(s)


def test_load_reuse_reload_and_ps(one_model_stack: Stack) -> None:
    s = one_model_stack
    first = gen(s, "first").json()
    assert first["load_duration"] > 0
    again = gen(s, "first").json()
    assert 0 < again["load_duration"] < first["load_duration"] / 10  # reused, not reloaded
    [entry] = ps(s)
    assert entry["name"] == entry["model"] == "first:latest"
    assert entry["context_length"] == 1024
    assert entry["size"] > 250_000_000 and entry["size_vram"] == 0
    assert entry["details"]["family"] == "gemma3" and len(entry["digest"]) == 64
    assert entry["expires_at"].endswith("Z")
    # A longer context reloads the model with it.
    longer = gen(s, "first", options={**OPTS, "num_ctx": 2048}).json()
    assert longer["load_duration"] > again["load_duration"] * 10
    [entry] = ps(s)
    assert entry["context_length"] == 2048
    # A shorter one (unlike in Ollama) does not: the request is held to its own num_ctx.
    prompt = "The quick brown fox jumps over the lazy dog. " * 150  # about 1,500 tokens
    shorter = gen(s, "first", prompt=prompt).json()
    assert 0 < shorter["load_duration"] < longer["load_duration"] / 10
    assert 512 <= shorter["prompt_eval_count"] < 1024  # truncated as at 1024: about half stays free
    assert [e["context_length"] for e in ps(s)] == [2048]
    full = gen(s, "first", prompt=prompt, options={**OPTS, "num_ctx": 2048}).json()
    assert full["prompt_eval_count"] > 1024 and full["load_duration"] < longer["load_duration"] / 10


def test_max_loaded_models_evicts_the_idle_model(one_model_stack: Stack) -> None:
    s = one_model_stack
    gen(s, "first")
    assert [m["name"] for m in ps(s)] == ["first:latest"]
    gen(s, "second")
    assert [m["name"] for m in ps(s)] == ["second:latest"]


def test_keep_alive_expiry_and_forever(one_model_stack: Stack) -> None:
    s = one_model_stack
    gen(s, "first", keep_alive="1s")
    assert [m["name"] for m in ps(s)] == ["first:latest"]
    assert wait_until(lambda: ps(s) == [], timeout=10)
    gen(s, "first", keep_alive=-1)
    [entry] = ps(s)
    assert entry["expires_at"] > "2200"  # "forever" is far in the future
    # A request without keep_alive keeps the loaded model's current value.
    gen(s, "first")
    assert ps(s)[0]["expires_at"] > "2200"


def test_info_describes_devices_and_limits(one_model_stack: Stack) -> None:
    info = httpx.get(one_model_stack.url + "/api/info", timeout=10).json()
    [device] = info["devices"]
    assert device["kind"] == "cpu" and device["total_memory"] > 0
    assert info["limits"] == {"max_loaded_models": 1, "max_queue": 512, "num_parallel": 1}
    assert info["default_context_length"] == 4096


def test_bounded_queue_answers_503_quickly(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> None:
    s = start_stack(tmp_path_factory.mktemp("queue"), CORRAL_NUM_PARALLEL="1", CORRAL_MAX_QUEUE="2")
    try:
        create_model(s.url, "gemma", gemma_path)
        assert gen(s, "gemma").status_code == 200  # loaded: the queue now guards its single slot
        body = {"model": "gemma", "prompt": "Hello", "stream": False, "options": {**OPTS, "num_predict": 24}}

        def one(_: int) -> tuple[int, str, float]:
            t0 = time.monotonic()
            r = httpx.post(s.url + "/api/generate", json=body, timeout=300)
            return r.status_code, r.json().get("error", ""), time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(one, range(10)))
        codes = [c for c, _, _ in results]
        assert set(codes) <= {200, 503}
        assert codes.count(200) <= 3
        rejected = [(e, t) for c, e, t in results if c == 503]
        assert len(rejected) >= 7
        assert all(e == QUEUE_FULL for e, _ in rejected)
        assert max(t for _, t in rejected) < 10  # refused at once, not after a generation
    finally:
        stop_stack(s)
