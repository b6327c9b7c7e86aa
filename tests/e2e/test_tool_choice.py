"""tool_choice, raw grammars, think levels and the thinking budget against the real stack and Gemma 3 270M.

Each tool_choice mode runs 20 seeds at temperature 1 (concurrently: the runner batches 8) and
every output must obey it: Gemma knows nothing of tools, so only the grammar can make it so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.test_gateway_api import TIME_TOOL, TOOL_TEMPLATE
from tests.stack import Stack, create_model, start_stack, stop_stack

# The city is an enum: a free string at temperature 1 can run past the token limit (a call cut
# off by `length` is no call), which would test max_tokens, not tool_choice.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
            "required": ["city"],
        },
    },
}
SEEDS = range(20)
OPTS = {"temperature": 1.0, "num_predict": 40, "num_ctx": 1024}
PROMPT = "What is the weather in Paris, and what time is it?"
THINK_TEMPLATE = """
{{- range .Messages }}{{ if eq .Role "user" }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
{{ if $.Think }}<think>
{{ end }}"""


@pytest.fixture(scope="module")
def tstack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("toolchoice"), CORRAL_NUM_PARALLEL="8")
    try:
        assert create_model(s.url, "gemma3", gemma_path)[-1] == {"status": "success"}
        for name, template in (("gemma-tools", TOOL_TEMPLATE), ("gemma-think", THINK_TEMPLATE)):
            r = httpx.post(
                s.url + "/api/create", json={"model": name, "from": "gemma3", "template": template, "stream": False}
            )
            assert r.status_code == 200, r.text
        yield s
    finally:
        stop_stack(s)


def seeded(fn: Any, seeds: range = SEEDS) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, seeds))


def native_chat(stack: Stack, seed: int, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "gemma-tools",
        "messages": [{"role": "user", "content": PROMPT}],
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "stream": False,
        "options": {**OPTS, "seed": seed},
        **extra,
    }
    r = httpx.post(stack.url + "/api/chat", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_required_openai_sdk(tstack: Stack) -> None:
    client = openai.OpenAI(base_url=tstack.url + "/v1", api_key="x", timeout=300)

    def one(seed: int) -> Any:
        return client.chat.completions.create(
            model="gemma-tools",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
            tool_choice="required",
            seed=seed,
            max_tokens=40,
        )

    for resp in seeded(one):
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            args = json.loads(call.function.arguments)
            assert call.function.name in ("get_weather", "get_time")
            if call.function.name == "get_weather":
                assert args["city"] in ("Paris", "London", "Tokyo")
            else:
                assert args == {}


def test_named_openai_sdk_streamed(tstack: Stack) -> None:
    client = openai.OpenAI(base_url=tstack.url + "/v1", api_key="x", timeout=300)

    def one(seed: int) -> list[Any]:
        chunks = client.chat.completions.create(
            model="gemma-tools",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            seed=seed,
            max_tokens=40,
            stream=True,
        )
        return list(chunks)

    for chunks in seeded(one):
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [c.function.name for c in calls] == ["get_time"] * len(calls) and calls
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_responses_named_and_required(tstack: Stack) -> None:
    """/v1/responses takes the same grammar path: a named function, then "required"."""
    client = openai.OpenAI(base_url=tstack.url + "/v1", api_key="x", timeout=300)
    tools: Any = [{"type": "function", **t["function"]} for t in (WEATHER_TOOL, TIME_TOOL)]

    def one(seed: int) -> tuple[Any, Any]:
        def ask(choice: Any) -> Any:
            return client.responses.create(
                model="gemma-tools", input=PROMPT, tools=tools, tool_choice=choice, temperature=1.0,
                max_output_tokens=64, store=False, extra_body={"seed": seed},
            )  # fmt: skip

        return ask({"type": "function", "name": "get_time"}), ask("required")

    for named, required in seeded(one):
        calls = [item for item in named.output if item.type == "function_call"]
        assert calls and all(c.name == "get_time" and json.loads(c.arguments) == {} for c in calls), named.output
        calls = [item for item in required.output if item.type == "function_call"]
        assert calls and all(c.name in ("get_weather", "get_time") for c in calls), required.output


def test_none_never_calls(tstack: Stack) -> None:
    # The prompt begs for the call; with tool_choice none the output must not open one.
    for r in seeded(
        lambda seed: native_chat(tstack, seed, tool_choice="none", options={**OPTS, "seed": seed, "num_predict": 12})
    ):
        assert not r["message"].get("tool_calls"), r
        assert not r["message"]["content"].lstrip().startswith("{"), r["message"]
    # auto on the same prompt: no constraint, so a tool-less base model answers in prose
    auto = native_chat(tstack, 1, tool_choice="auto")
    assert auto["done"]


def test_required_native(tstack: Stack) -> None:
    for r in seeded(lambda seed: native_chat(tstack, seed, tool_choice="required")):
        calls = r["message"]["tool_calls"]
        assert calls and {c["function"]["name"] for c in calls} <= {"get_weather", "get_time"}


def test_anthropic_sdk_forced_tool(tstack: Stack) -> None:
    client = anthropic.Anthropic(base_url=tstack.url, api_key="x", timeout=300)
    tool = {
        "name": "get_weather",
        "description": "Current weather in a city",
        # an enum keeps the call short: a free string may run past max_tokens at temperature 1
        "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]},
    }

    def one(seed: int) -> Any:
        return client.messages.create(
            model="gemma-tools",
            max_tokens=40,
            messages=[{"role": "user", "content": "Hello there"}],
            tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "get_weather"},
        )

    for msg in seeded(one, range(5)):  # the same grammar as above; the SDK shape is what is new here
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert msg.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
        assert uses[0].input["city"] in ("Paris", "Tokyo")  # type: ignore[index]


def test_raw_grammar_and_bad_grammars(tstack: Stack) -> None:
    g = 'root ::= ("yes" | "no") "."'
    r = httpx.post(
        tstack.url + "/api/generate",
        json={"model": "gemma3", "prompt": "Is the sky blue?", "grammar": g, "stream": False, "options": OPTS},
        timeout=300,
    )
    assert r.status_code == 200 and r.json()["response"] in ("yes.", "no."), r.text
    body = {"model": "gemma3", "messages": [{"role": "user", "content": "Hi"}], "grammar": g, "max_tokens": 8}
    r = httpx.post(tstack.url + "/v1/chat/completions", json=body, timeout=300)
    assert r.json()["choices"][0]["message"]["content"] in ("yes.", "no."), r.text
    for bad, words in (('root ::= "yes', "unterminated string literal"), ('answer ::= "x"', "no 'root' rule")):
        r = httpx.post(tstack.url + "/v1/chat/completions", json={**body, "grammar": bad}, timeout=300)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
        for path, extra in (("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": body["messages"]})):
            for stream in (False, True):
                r = httpx.post(
                    tstack.url + path, json={"model": "gemma3", "grammar": bad, "stream": stream, **extra}, timeout=300
                )
                assert r.status_code == 400 and words in r.json()["error"], (path, stream, r.text)
    r = httpx.post(tstack.url + "/api/chat", json={**body, "tool_choice": "always"}, timeout=60)
    assert r.status_code == 400 and "invalid tool_choice" in r.json()["error"]


def test_think_levels_and_budget(tstack: Stack) -> None:
    msgs = [{"role": "user", "content": "Think about the sea."}]
    for model, think, error in (
        ("gemma3", True, '"gemma3" does not support thinking'),
        ("gemma3", "high", '"gemma3" does not support thinking'),
        ("gemma-think", "high", '"gemma-think" does not support think levels'),
        ("gemma-think", "loud", "invalid think value"),
    ):
        for path, extra in (("/api/chat", {"messages": msgs}), ("/api/generate", {"prompt": "x"})):
            r = httpx.post(tstack.url + path, json={"model": model, "think": think, "stream": False, **extra})
            assert r.status_code == 400 and error in r.json()["error"], (path, r.text)
    show = httpx.post(tstack.url + "/api/show", json={"model": "gemma-think"}).json()
    assert "thinking" in show["capabilities"]
    client = anthropic.Anthropic(base_url=tstack.url, api_key="x", timeout=300)

    def thought(budget: int | None) -> tuple[str, str]:
        extra: dict[str, Any] = {"thinking": {"type": "enabled", "budget_tokens": budget}} if budget else {}
        msg = client.messages.create(model="gemma-think", max_tokens=80, messages=msgs, **extra)  # type: ignore[arg-type]
        thinking = "".join(b.thinking for b in msg.content if b.type == "thinking")
        text = "".join(b.text for b in msg.content if b.type == "text")
        return thinking, text

    # A budget of 8 closes the block after 8 tokens (tests/runner/test_constraints.py counts them
    # exactly); the model then answers. Without one, this tiny model thinks to max_tokens.
    capped, answer = thought(8)
    assert capped and len(capped) <= 8 * 20 and answer.strip(), (capped, answer)
