"""OpenAI `n` and `logit_bias`, Ollama's `_debug_render_only`, tool call ids and names in
templates, and `requires` in /api/show, against the real stack and the real Gemma model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.stack import Stack

ASK = [{"role": "user", "content": "Name a fruit."}]
IDS_TEMPLATE = (
    "{{ range .Messages }}[{{ .Role }}"
    "{{ if .ToolCallID }} id={{ .ToolCallID }}{{ end }}{{ if .ToolName }} name={{ .ToolName }}{{ end }}]"
    "{{ .Content }}{{ end }}<start_of_turn>model\n"
)
CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


@pytest.fixture(scope="module")
def oai(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="anything")


@pytest.fixture(scope="module")
def ids_model(stack: Stack, gemma: str) -> str:
    body = {"model": "gemma-ids", "from": gemma, "template": IDS_TEMPLATE, "requires": "v0.14.0", "stream": False}
    r = httpx.post(stack.url + "/api/create", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return "gemma-ids"


def test_n_choices_each_complete_with_usage_summed(oai: openai.OpenAI, gemma: str) -> None:
    r = oai.chat.completions.create(
        model=gemma,
        messages=ASK,
        n=3,
        max_tokens=6,
        temperature=1.0,
        seed=11,
        logprobs=True,  # type: ignore[arg-type]
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    tokens = [len(c.logprobs.content or []) for c in r.choices if c.logprobs]
    assert len(tokens) == 3 and all(t > 0 for t in tokens)
    assert all(c.finish_reason in ("stop", "length") and c.message.content is not None for c in r.choices)
    assert r.usage is not None and r.usage.completion_tokens == sum(tokens)
    assert r.usage.prompt_tokens > 0


def test_n_choices_stream_interleaved_by_index(oai: openai.OpenAI, gemma: str) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=gemma,
            messages=ASK,  # type: ignore[arg-type]
            n=2,
            max_tokens=6,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for c in chunks:
        for choice in c.choices:
            by_index[choice.index].append(choice)
    for choices in by_index.values():
        assert choices[0].delta.role == "assistant"
        assert [ch.finish_reason for ch in choices if ch.finish_reason] in (["stop"], ["length"])
        assert choices[-1].finish_reason is not None  # the finish chunk closes its choice
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [0, 17, "2"])
def test_bad_n_is_a_400(stack: Stack, gemma: str, n: object, stream: bool) -> None:
    body = {"model": gemma, "messages": ASK, "n": n, "stream": stream}
    r = httpx.post(stack.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "n must be" in r.json()["error"]["message"]


def test_completions_n_choices_index_per_prompt(oai: openai.OpenAI, gemma: str) -> None:
    r = oai.completions.create(model=gemma, prompt=["One,", "A,"], n=2, max_tokens=3, seed=5)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]


def _token(stack: Stack, model: str, text: str) -> int:
    r = httpx.post(stack.url + "/api/tokenize", json={"model": model, "content": text}, timeout=60)
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert len(tokens) == 1, tokens
    return int(tokens[0])


def test_logit_bias_bans_and_forces_tokens(oai: openai.OpenAI, stack: Stack, gemma: str) -> None:
    def first_token(**extra: Any) -> str:
        r = oai.chat.completions.create(
            model=gemma,
            messages=ASK,
            max_tokens=3,
            temperature=0,
            logprobs=True,
            **extra,  # type: ignore[arg-type]
        )
        assert r.choices[0].logprobs and r.choices[0].logprobs.content
        return r.choices[0].logprobs.content[0].token

    plain = first_token()
    banned = first_token(logit_bias={str(_token(stack, gemma, plain)): -100})
    assert banned != plain
    forced_id = _token(stack, gemma, " zebra")
    r = oai.chat.completions.create(
        model=gemma,
        messages=ASK,
        max_tokens=3,
        temperature=0.8,
        seed=1,
        logit_bias={str(forced_id): 100},  # type: ignore[arg-type]
    )
    assert r.choices[0].message.content == " zebra" * 3


def test_logit_bias_out_of_range_is_a_400(stack: Stack, gemma: str) -> None:
    body = {"model": gemma, "messages": ASK, "max_tokens": 2}
    over = httpx.post(stack.url + "/v1/chat/completions", json={**body, "logit_bias": {"5": 101}}, timeout=60)
    assert over.status_code == 400 and "between -100 and 100" in over.json()["error"]["message"]
    bad_id = httpx.post(stack.url + "/v1/chat/completions", json={**body, "logit_bias": {"99999999": 5}}, timeout=60)
    assert bad_id.status_code == 400 and "token id out of range" in bad_id.json()["error"]["message"]


def test_tool_ids_and_names_reach_the_template(stack: Stack, ids_model: str) -> None:
    native = httpx.post(
        stack.url + "/api/chat",
        json={
            "model": ids_model,
            "_debug_render_only": True,
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather"}}]},
                {"role": "tool", "tool_call_id": "call_7", "tool_name": "get_weather", "content": "sunny"},
            ],
        },
        timeout=60,
    ).json()
    assert native["done"] is True and native["message"]["content"] == ""
    rendered = native["_debug_info"]["rendered_template"]
    assert "[tool id=call_7 name=get_weather]sunny" in rendered and native["_debug_info"]["image_count"] == 0
    openai_body = {
        "model": ids_model,
        "_debug_render_only": True,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},  # the name comes from the call
        ],
    }
    r = httpx.post(stack.url + "/v1/chat/completions", json=openai_body, timeout=60).json()
    assert r["_debug_info"]["rendered_template"] == rendered


def test_debug_render_only_on_generate_runs_no_model(stack: Stack, ids_model: str) -> None:
    r = httpx.post(
        stack.url + "/api/generate",
        json={"model": ids_model, "prompt": "hello", "_debug_render_only": True, "keep_alive": 0},
        timeout=60,
    ).json()
    assert r["done"] is True and r["response"] == ""
    assert r["_debug_info"]["rendered_template"] == "[user]hello<start_of_turn>model\n"
    assert not any(m["name"].startswith("gemma-ids") for m in httpx.get(stack.url + "/api/ps").json()["models"])


def test_requires_is_shown_inherited_and_checked(stack: Stack, ids_model: str) -> None:
    show = httpx.post(stack.url + "/api/show", json={"model": ids_model}, timeout=60).json()
    assert show["requires"] == "0.14.0"
    child = {"model": "gemma-ids-child", "from": ids_model, "system": "Be brief.", "stream": False}
    assert httpx.post(stack.url + "/api/create", json=child, timeout=120).status_code == 200
    assert httpx.post(stack.url + "/api/show", json={"model": "gemma-ids-child"}, timeout=60).json()["requires"] == (
        "0.14.0"
    )
    bad = httpx.post(stack.url + "/api/create", json={**child, "requires": "soon"}, timeout=60)
    assert bad.status_code == 400 and "requires must be a valid semver" in bad.json()["error"]
    plain = httpx.post(stack.url + "/api/show", json={"model": "gemma3"}, timeout=60).json()
    assert "requires" not in plain
    modelfile = "FROM gemma3\nREQUIRES 1.2.3\n"
    r = httpx.post(
        stack.url + "/api/create", json={"model": "gemma-req", "modelfile": modelfile, "stream": False}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert (
        json.loads(httpx.post(stack.url + "/api/show", json={"model": "gemma-req"}, timeout=60).text)["requires"]
        == "1.2.3"
    )
