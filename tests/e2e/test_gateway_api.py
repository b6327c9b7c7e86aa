"""The gateway's API surfaces against the real stack: native chat/embed, tools, format,
thinking checks, hostile templates."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import pytest

from tests.stack import Stack

OPTS = {"temperature": 0, "num_predict": 12, "num_ctx": 1024}

TOOL_TEMPLATE = """
{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $.Tools $last }}You can call these tools: {{ json $.Tools }}
{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments -}}
}{{ end }}
{{- else }}{{ .Content }}{{ end }}<end_of_turn>
{{ else if eq .Role "tool" }}<start_of_turn>user
Result of {{ .ToolName }}: {{ .Content }}<end_of_turn>
{{ end }}{{ if and $last (ne .Role "assistant") }}<start_of_turn>model
{{ end }}{{ end }}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {}}}
# Forces a tool-call-shaped answer from a base model that knows nothing of tools.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Tokyo"]}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}


def ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line]


@pytest.fixture(scope="session")
def tool_model(stack: Stack, gemma: str) -> str:
    r = httpx.post(
        stack.url + "/api/create",
        json={"model": "gemma-tools", "from": gemma, "template": TOOL_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return "gemma-tools"


def test_chat_streams_with_content_on_every_chunk(stack: Stack, gemma: str) -> None:
    body = {"model": gemma, "messages": [{"role": "user", "content": "Say hi"}], "options": OPTS}
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        # A fresh prompt and the same prompt from a slot's cached KV can differ in the last bits
        # (docs/architecture.md, Determinism; seen on an AMX CPU): compare cached with cached.
        assert c.post("/api/chat", json={**body, "stream": False}).status_code == 200
        r = c.post("/api/chat", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        chunks = ndjson(r)
        assert all(ch["message"]["role"] == "assistant" and "content" in ch["message"] for ch in chunks)
        final = chunks[-1]
        assert final["done"] and final["done_reason"] in ("stop", "length") and final["eval_count"] > 0
        whole = c.post("/api/chat", json={**body, "stream": False}).json()
        assert whole["message"]["content"] == "".join(ch["message"]["content"] for ch in chunks)
        assert whole["done_reason"] == final["done_reason"]


def test_chat_load_unload_and_errors(stack: Stack, gemma: str) -> None:
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        r = c.post("/api/chat", json={"model": gemma, "messages": [], "options": {"num_ctx": 1024}}).json()
        assert r["done_reason"] == "load" and r["message"] == {"role": "assistant", "content": ""}
        assert c.post("/api/chat", json={"messages": []}).json()["error"] == "model is required"
        r2 = c.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert r2.status_code == 404 and r2.json()["error"] == "model 'nope' not found"
        r3 = c.post("/api/chat", json={"model": gemma, "messages": [{"role": "user", "content": "x"}], "think": True})
        assert r3.status_code == 400 and r3.json()["error"] == f'"{gemma}" does not support thinking'
        r4 = c.post("/api/chat", json={"model": gemma, "messages": [{"role": "user", "content": "x"}], "think": "x"})
        assert r4.status_code == 400 and "invalid think value" in r4.json()["error"]
        r5 = c.post(
            "/api/chat", json={"model": gemma, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL]}
        )
        assert r5.status_code == 400 and r5.json()["error"].endswith("does not support tools")


def test_format_json_schema_constrains_output(stack: Stack, gemma: str) -> None:
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]}
    body = {
        "model": gemma,
        "messages": [{"role": "user", "content": "Pick a city"}],
        "format": schema,
        "stream": False,
        "options": {**OPTS, "num_predict": 40},
    }
    r = httpx.post(stack.url + "/api/chat", json=body, timeout=120).json()
    assert json.loads(r["message"]["content"])["city"] in ("Paris", "Tokyo")
    body["format"] = "json"
    r = httpx.post(stack.url + "/api/chat", json=body, timeout=120).json()
    assert isinstance(json.loads(r["message"]["content"]), dict)
    bad = httpx.post(stack.url + "/api/chat", json={**body, "format": "yaml"}, timeout=60)
    assert bad.status_code == 400 and "invalid format" in bad.json()["error"]


def test_tool_call_round_trip(stack: Stack, tool_model: str) -> None:
    show = httpx.post(stack.url + "/api/show", json={"model": tool_model}).json()
    assert "tools" in show.get("capabilities", ["tools"])
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {
        "model": tool_model,
        "messages": messages,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "format": CALL_SCHEMA,
        "options": {**OPTS, "num_predict": 40},
    }
    for stream in (True, False):
        r = httpx.post(stack.url + "/api/chat", json={**body, "stream": stream}, timeout=120)
        assert r.status_code == 200, r.text
        if stream:
            chunks = ndjson(r)
            calls = [tc for ch in chunks for tc in ch["message"].get("tool_calls", [])]
            assert chunks[-1]["done_reason"] == "stop"
        else:
            calls = r.json()["message"]["tool_calls"]
        assert len(calls) == 1
        call = calls[0]
        assert call["id"].startswith("call_") and len(call["id"]) == 13
        assert call["function"]["name"] == "get_weather" and call["function"]["index"] == 0
        assert call["function"]["arguments"]["city"] in ("Paris", "Tokyo")
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "get_weather", "content": "11 degrees celsius"},
    ]
    follow = httpx.post(
        stack.url + "/api/chat",
        json={"model": tool_model, "messages": messages, "tools": [WEATHER_TOOL], "stream": False, "options": OPTS},
        timeout=120,
    ).json()
    assert follow["done"] and isinstance(follow["message"]["content"], str)


def test_ollama_client_chat_with_tools(stack: Stack, tool_model: str) -> None:
    client = ollama.Client(host=stack.url)
    resp = client.chat(
        model=tool_model,
        messages=[{"role": "user", "content": "Weather in Tokyo?"}],
        tools=[WEATHER_TOOL],
        format=CALL_SCHEMA,
        options={**OPTS, "num_predict": 40},
    )
    assert resp.message.tool_calls and resp.message.tool_calls[0].function.name == "get_weather"
    assert resp.done_reason == "stop"


def test_embed_and_legacy_embeddings(stack: Stack, gemma: str) -> None:
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        empty = c.post("/api/embed", json={"model": gemma, "input": [], "options": {"num_ctx": 1024}})
        assert empty.status_code == 200 and empty.json()["embeddings"] == []
        r = c.post("/api/embed", json={"model": gemma, "input": ["hello", "world"], "options": {"num_ctx": 1024}})
        if r.status_code != 200:
            pytest.skip(f"runner cannot embed with a generative model yet: {r.text}")
        vecs = r.json()["embeddings"]
        assert len(vecs) == 2 and abs(sum(x * x for x in vecs[0]) - 1) < 1e-3
        short = c.post(
            "/api/embed", json={"model": gemma, "input": "hello", "dimensions": 8, "options": {"num_ctx": 1024}}
        ).json()
        assert len(short["embeddings"][0]) == 8 and abs(sum(x * x for x in short["embeddings"][0]) - 1) < 1e-3
        legacy = c.post("/api/embeddings", json={"model": gemma, "prompt": "hello", "options": {"num_ctx": 1024}})
        assert len(legacy.json()["embedding"]) == len(vecs[0])
        assert c.post("/api/embed", json={"model": gemma, "input": [1.5]}).status_code == 400


@pytest.mark.parametrize(
    "template",
    [
        "{{ range 100000000 }}{{ end }}",
        "{{ range 100000 }}{{ range 100000 }}x{{ end }}{{ end }}",
        "{{ .Messages.__class__ }}",
        '{{ template "x" }}',
        "{{ if }}",
    ],
)
def test_hostile_go_templates_are_refused(stack: Stack, gemma: str, template: str) -> None:
    body = {"model": gemma, "prompt": "hi", "template": template, "stream": False, "options": OPTS}
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"].startswith("template error"), r.text
    assert httpx.get(stack.url + "/").status_code == 200


def test_generate_with_template_override_and_system(stack: Stack, gemma: str) -> None:
    body = {
        "model": gemma,
        "prompt": "Count: 1, 2, 3,",
        "system": "ignored",
        "template": "{{ .Prompt }}",
        "stream": False,
        "options": OPTS,
    }
    r = httpx.post(stack.url + "/api/generate", json=body, timeout=120).json()
    assert r["done"] and r["done_reason"] in ("stop", "length") and r["response"]


def test_ollama_client_chat_embed_and_ps(stack: Stack, gemma: str) -> None:
    client = ollama.Client(host=stack.url)
    streamed = list(client.chat(model=gemma, messages=[{"role": "user", "content": "Hi"}], stream=True, options=OPTS))
    assert streamed[-1].done and streamed[-1].done_reason in ("stop", "length")
    assert all(part.message.role == "assistant" for part in streamed)
    emb = client.embed(model=gemma, input=["one", "two"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 640
    assert any(m.model == f"{gemma}:latest" for m in client.ps().models)


def test_prompt_longer_than_the_context_is_truncated_unless_asked_not_to(stack: Stack, gemma: str) -> None:
    body = {
        "model": gemma,
        "prompt": "The quick brown fox jumps over the lazy dog. " * 60,  # ~600 tokens
        "stream": False,
        "options": {"num_ctx": 256, "num_predict": 4, "temperature": 0},
    }
    ok = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
    assert ok.status_code == 200, ok.text
    assert 0 < ok.json()["prompt_eval_count"] <= 256
    refused = httpx.post(stack.url + "/api/generate", json={**body, "truncate": False}, timeout=300)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the prompt is longer than the context length")
