"""/api/tokenize, /api/detokenize and Anthropic's count_tokens with the real Gemma tokenizer."""

from __future__ import annotations

import anthropic
import httpx

from tests.e2e.test_gateway_api import tool_model  # noqa: F401  (fixture)
from tests.stack import Stack

OPTS = {"num_ctx": 1024}


def test_tokenize_round_trip(stack: Stack, gemma: str) -> None:
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        r = c.post("/api/tokenize", json={"model": gemma, "content": "Hello, world!", "options": OPTS})
        assert r.status_code == 200, r.text
        tokens = r.json()["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        with_bos = c.post("/api/tokenize", json={"model": gemma, "prompt": "Hello, world!", "add_special": True})
        assert with_bos.json()["tokens"][1:] == tokens and len(with_bos.json()["tokens"]) == len(tokens) + 1
        back = c.post("/api/detokenize", json={"model": gemma, "tokens": tokens})
        assert back.status_code == 200 and back.json()["content"] == "Hello, world!"
        assert c.post("/api/tokenize", json={"model": "nope", "content": "x"}).status_code == 404
        assert c.post("/api/tokenize", json={"model": gemma}).status_code == 400
        assert c.post("/api/detokenize", json={"model": gemma, "tokens": [-1]}).status_code == 400


def test_anthropic_count_tokens(stack: Stack, gemma: str, tool_model: str) -> None:  # noqa: F811
    client = anthropic.Anthropic(base_url=stack.url, api_key="anything")
    msgs = [{"role": "user", "content": "Hello, world!"}]
    plain = client.messages.count_tokens(model=gemma, messages=msgs)  # type: ignore[arg-type]
    tokens = httpx.post(
        stack.url + "/api/tokenize", json={"model": gemma, "content": "Hello, world!", "add_special": True}
    ).json()["tokens"]
    assert plain.input_tokens > len(tokens)  # the text, with BOS, inside the chat fallback's turn markers
    with_system = client.messages.count_tokens(model=gemma, system="Answer in French.", messages=msgs)  # type: ignore[arg-type]
    assert with_system.input_tokens > plain.input_tokens
    tool = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    bare = client.messages.count_tokens(model=tool_model, messages=msgs)  # type: ignore[arg-type]
    with_tools = client.messages.count_tokens(model=tool_model, messages=msgs, tools=[tool])  # type: ignore[arg-type,list-item]
    assert with_tools.input_tokens > bare.input_tokens
