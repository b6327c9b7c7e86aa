"""Chat history truncation and generate's deprecated `context` against the real stack.

`prompt_eval_count` excludes tokens served from a slot's KV cache, so every count that is
compared below is taken on a freshly loaded model (unloaded first): then it is the whole
prompt's token count."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama

from tests.stack import Stack

FOX = "The quick brown fox jumps over the lazy dog. "  # ~10 tokens
SYSTEM = {"role": "system", "content": "Answer in French."}
OLD = [
    {"role": "user", "content": "Story one: " + FOX * 10},
    {"role": "assistant", "content": "Story two: " + FOX * 10},
    {"role": "user", "content": "Story three: " + FOX * 10},
    {"role": "assistant", "content": "Story four: " + FOX * 10},
]
LAST = {"role": "user", "content": "What colour is the sky?"}
SMALL_CTX = 256
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 8}


def unload(stack: Stack, model: str) -> None:
    r = httpx.post(stack.url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=120)
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text


def chat(stack: Stack, model: str, messages: list[dict[str, Any]], num_ctx: int, **extra: Any) -> httpx.Response:
    body = {
        "model": model,
        "messages": messages,
        "stream": False,
        "options": {**GREEDY, "num_predict": 1, "num_ctx": num_ctx},
        **extra,
    }
    return httpx.post(stack.url + "/api/chat", json=body, timeout=300)


def cold_chat_count(stack: Stack, model: str, messages: list[dict[str, Any]], num_ctx: int) -> int:
    unload(stack, model)
    r = chat(stack, model, messages, num_ctx)
    assert r.status_code == 200, r.text
    return int(r.json()["prompt_eval_count"])


def test_chat_drops_the_oldest_messages_to_fit_keeping_the_system_message(stack: Stack, gemma: str) -> None:
    messages = [SYSTEM, *OLD, LAST]
    full = cold_chat_count(stack, gemma, messages, 4096)
    assert full > SMALL_CTX  # the whole conversation cannot fit
    # ~100 tokens a story: the system message, the last two stories and the question fit
    # 256 tokens, three stories do not.
    expected = cold_chat_count(stack, gemma, [SYSTEM, *OLD[2:], LAST], SMALL_CTX)
    without_system = cold_chat_count(stack, gemma, [*OLD[2:], LAST], SMALL_CTX)
    assert without_system < expected < SMALL_CTX

    truncated = cold_chat_count(stack, gemma, messages, SMALL_CTX)
    assert truncated == expected  # exactly that suffix was rendered, the system message first

    refused = chat(stack, gemma, messages, SMALL_CTX, truncate=False)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"].startswith("the prompt is longer than the context length")


def generate(stack: Stack, model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "stream": False, "options": {**GREEDY, "num_ctx": 1024}, **extra}
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_generate_returns_context_and_writes_it_before_the_next_prompt(stack: Stack, gemma: str) -> None:
    unload(stack, gemma)
    first = generate(stack, gemma, "Why is the sky blue?")
    context = first["context"]
    assert context and all(isinstance(t, int) for t in context)
    # prompt + output, without the BOS the runner adds (as Ollama's Tokenize)
    assert len(context) >= first["prompt_eval_count"] - 1

    unload(stack, gemma)
    follow = generate(stack, gemma, " Explain it to a child.", context=context)
    unload(stack, gemma)
    alone = generate(stack, gemma, " Explain it to a child.")
    assert follow["prompt_eval_count"] >= alone["prompt_eval_count"] + len(context) - 2
    assert len(follow["context"]) > len(context)
    assert follow["context"][: len(context) - 1] == context[:-1]  # the earlier exchange comes first


def test_context_is_on_the_last_streamed_chunk_only_and_never_raw(stack: Stack, gemma: str) -> None:
    body = {"model": gemma, "prompt": "Why is the sky blue?", "options": {**GREEDY, "num_ctx": 1024}}
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert lines[-1]["done"] and lines[-1]["context"]
    assert not any("context" in line for line in lines[:-1])
    raw = generate(stack, gemma, "Why is the sky blue?", raw=True)
    assert raw["done"] and "context" not in raw
    for bad in ([-1], [2**40], [10**9]):
        refused = httpx.post(stack.url + "/api/generate", json={**body, "context": bad, "stream": False}, timeout=60)
        assert refused.status_code == 400, refused.text


def test_ollama_client_round_trips_context(stack: Stack, gemma: str) -> None:
    client = ollama.Client(host=stack.url)
    options = {**GREEDY, "num_ctx": 1024}
    first = client.generate(model=gemma, prompt="Why is the sky blue?", options=options)
    assert first.context and all(isinstance(t, int) for t in first.context)
    second = client.generate(model=gemma, prompt=" And at sunset?", context=first.context, options=options)
    assert second.context is not None and len(second.context) > len(first.context)
    assert list(second.context[: len(first.context) - 1]) == list(first.context[:-1])
