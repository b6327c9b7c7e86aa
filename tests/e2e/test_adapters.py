"""A model created with ADAPTER layers is served with its LoRA adapters applied."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests import ggufs
from tests.e2e.test_registry_manage import upload
from tests.runner.test_tiny_models import write_tiny_lora
from tests.stack import Stack

GREEDY = {"temperature": 0, "num_predict": 1, "seed": 1}


def first_token_logprobs(stack: Stack, model: str) -> list[tuple[str, float]]:
    r = httpx.post(
        stack.url + "/api/generate",
        json={"model": model, "prompt": "abc", "raw": True, "stream": False, "options": GREEDY, "top_logprobs": 5},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    top: list[dict[str, Any]] = r.json()["logprobs"][0]["top_logprobs"]
    return [(t["token"], round(t["logprob"], 3)) for t in top]


def create(stack: Stack, name: str, files: dict[str, str], adapters: dict[str, str] | None = None) -> None:
    body: dict[str, Any] = {"model": name, "files": files, "stream": False}
    if adapters:
        body["adapters"] = adapters
    r = httpx.post(stack.url + "/api/create", json=body, timeout=120)
    assert r.status_code == 200, r.text


def test_adapter_layers_change_what_the_model_computes(stack: Stack, tmp_path: Path) -> None:
    model = upload(stack, ggufs.write_tiny_gguf(tmp_path / "tiny.gguf", seed=61).path)
    lora = upload(stack, write_tiny_lora(tmp_path / "lora.gguf"))
    create(stack, "tiny-base", {"tiny.gguf": model})
    create(stack, "tiny-lora", {"tiny.gguf": model}, {"lora.gguf": lora})
    layers = httpx.post(stack.url + "/api/show", json={"model": "tiny-lora"}, timeout=30).json()
    assert "adapter" in str(layers.get("modelfile", "")).lower()

    base = first_token_logprobs(stack, "tiny-base")
    adapted = first_token_logprobs(stack, "tiny-lora")
    assert base != adapted  # the same weights with the adapter applied compute something else
    assert first_token_logprobs(stack, "tiny-lora") == adapted  # and they do so reliably

    # Sharing weights, the two are still two models: loaded side by side, unloaded one by one.
    assert {"tiny-base:latest", "tiny-lora:latest"} <= loaded_models(stack)
    r = httpx.post(stack.url + "/api/generate", json={"model": "tiny-base", "keep_alive": 0}, timeout=60)
    assert r.json()["done_reason"] == "unload"
    assert eventually(lambda: "tiny-base:latest" not in loaded_models(stack))
    assert "tiny-lora:latest" in loaded_models(stack)


def loaded_models(stack: Stack) -> set[str]:
    return {m["name"] for m in httpx.get(stack.url + "/api/ps", timeout=30).json()["models"]}


def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()
