"""Runner features through the whole stack's REST API: structured output, batch embeddings, logprobs."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.stack import Stack

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


def test_format_schema_returns_valid_json(stack: Stack, gemma: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    body = {
        "model": gemma,
        "prompt": "Give a city and its population as JSON.",
        "format": SCHEMA,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 80},
    }
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["response"]), SCHEMA)


def test_embed_batch_equals_one_by_one(stack: Stack, gemma: str) -> None:
    texts = ["The sky is blue.", "Lighthouses guide ships.", "cats"]
    r = httpx.post(stack.url + "/api/embed", json={"model": gemma, "input": texts}, timeout=300)
    assert r.status_code == 200, r.text
    batch = r.json()
    assert len(batch["embeddings"]) == 3 and batch["prompt_eval_count"] > 0
    for text, vec in zip(texts, batch["embeddings"], strict=True):
        one = httpx.post(stack.url + "/api/embed", json={"model": gemma, "input": text}, timeout=300).json()
        assert float(np.dot(vec, one["embeddings"][0])) >= 0.999


def test_logprobs_in_the_response(stack: Stack, gemma: str) -> None:
    body = {
        "model": gemma,
        "prompt": "Say yes.",
        "stream": False,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {"temperature": 0, "num_predict": 3},
    }
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    items = r.json()["logprobs"]
    assert len(items) == 3
    assert all(it["logprob"] <= 0 and len(it["top_logprobs"]) == 2 for it in items)
