"""Every field of every text endpoint, given a value of every JSON type, against the real
stack: the answer is never a server error, and an error is in its surface's shape (Ollama's
`{"error": "..."}`, OpenAI's `{"error": {"message": ...}}`, Anthropic's `{"type": "error",
...}`). Before the /v1 surfaces had typed request models, more than a hundred of these
requests were 500s or dropped connections (`"model": 7`, `"reasoning": "x"`,
`"max_tokens": 1e20`, `"tools": "x"` ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stack import Stack

MODEL = "bad-inputs"
# A value of each JSON type, and an integer no int32 or int64 field holds.
VALUES: list[Any] = ["x", 7, 1.5, True, None, [], [{"a": 1}], {"a": 1}, 10**20]
MSG = [{"role": "user", "content": "Hi"}]
ENDPOINTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/v1/chat/completions": (
        {"model": MODEL, "messages": MSG, "max_tokens": 2},
        [
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "stream",
            "stream_options",
            "tools",
            "tool_choice",
            "response_format",
            "reasoning_effort",
            "reasoning",
            "keep_alive",
            "grammar",
        ],
    ),
    "/v1/completions": (
        {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
        [
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "seed",
            "suffix",
            "logprobs",
            "stream",
            "stream_options",
            "keep_alive",
            "logit_bias",
        ],
    ),
    "/v1/embeddings": (
        {"model": MODEL, "input": "Hi"},
        ["model", "input", "dimensions", "encoding_format", "keep_alive"],
    ),
    "/v1/messages": (
        {"model": MODEL, "messages": MSG, "max_tokens": 2},
        [
            "model",
            "messages",
            "max_tokens",
            "system",
            "temperature",
            "top_p",
            "top_k",
            "stop_sequences",
            "stream",
            "tools",
            "tool_choice",
            "thinking",
            "output_config",
        ],
    ),
    "/v1/messages/count_tokens": (
        {"model": MODEL, "messages": MSG},
        ["model", "messages", "system", "tools", "thinking"],
    ),
    "/v1/responses": (
        {"model": MODEL, "input": "Hi", "max_output_tokens": 2},
        [
            "model",
            "input",
            "instructions",
            "max_output_tokens",
            "temperature",
            "top_p",
            "seed",
            "stream",
            "tools",
            "tool_choice",
            "text",
            "reasoning",
            "previous_response_id",
            "store",
            "keep_alive",
        ],
    ),
    "/api/chat": (
        {"model": MODEL, "messages": MSG, "stream": False},
        [
            "model",
            "messages",
            "options",
            "format",
            "tools",
            "think",
            "keep_alive",
            "stream",
            "logprobs",
            "top_logprobs",
        ],
    ),
    "/api/generate": (
        {"model": MODEL, "prompt": "Hi", "stream": False},
        [
            "model",
            "prompt",
            "options",
            "format",
            "system",
            "template",
            "context",
            "raw",
            "suffix",
            "images",
            "think",
            "keep_alive",
            "logprobs",
            "top_logprobs",
        ],
    ),
    "/api/embed": (
        {"model": MODEL, "input": "Hi"},
        ["model", "input", "truncate", "dimensions", "options", "keep_alive"],
    ),
}
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id", "images", "thinking", "tool_name"]


@pytest.fixture(scope="module")
def model(stack: Stack, gemma: str) -> Iterator[str]:
    """Gemma with num_predict 4, so that a body whose values are all valid generates briefly.
    Unloaded afterwards: the keep_alive values sent here (forever among them) stay with the
    instance, which the session stack's later tests share."""
    body = {"model": MODEL, "from": gemma, "parameters": {"num_predict": 4}, "stream": False}
    assert httpx.post(stack.url + "/api/create", json=body, timeout=120).status_code == 200
    yield MODEL
    httpx.post(stack.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)


def _shaped(path: str, body: Any) -> bool:
    if path.startswith("/v1/messages"):
        return body.get("type") == "error" and isinstance(body["error"].get("message"), str)
    if path.startswith("/v1/"):
        return isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str)
    return isinstance(body.get("error"), str)


def _bodies(path: str) -> list[tuple[str, dict[str, Any]]]:
    base, fields = ENDPOINTS[path]
    out = [(f"{f}={v!r}", {**base, f: v}) for f in fields for v in VALUES]
    if "messages" in base:
        out += [
            (f"messages[0].{f}={v!r}", {**base, "messages": [{**MSG[0], f: v}]}) for f in MESSAGE_FIELDS for v in VALUES
        ]
    return out


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_no_value_of_any_type_is_a_server_error(stack: Stack, model: str, path: str) -> None:
    wrong: list[str] = []
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        for what, body in _bodies(path):
            try:
                r = client.post(path, json=body)
            except httpx.TransportError as exc:  # a dropped connection is as bad as a 500
                wrong.append(f"{what}: {exc!r}")
                continue
            if r.status_code >= 500:
                wrong.append(f"{what}: {r.status_code} {r.text[:120]}")
            elif r.status_code >= 400 and not _shaped(path, r.json()):
                wrong.append(f"{what}: {r.status_code} not in the surface's error shape: {r.text[:120]}")
    assert not wrong, f"{len(wrong)} bad answers:\n" + "\n".join(wrong)
    # Nothing accepted above poisoned what the stack keeps (a keep_alive of 1e20 seconds once
    # made every later /api/ps fail).
    for check in ("/api/ps", "/api/tags", "/api/status"):
        assert httpx.get(stack.url + check, timeout=30).status_code == 200, check
