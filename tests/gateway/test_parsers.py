"""Tool-call and thinking parsers on scripted output, fed in small pieces like a stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.gateway.formats import constraint, thinking
from services.gateway.pipeline import parse_think
from services.gateway.prompts import render_jinja
from services.gateway.thinking import ThinkingParser
from services.gateway.tools import ToolParser

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"properties": {"city": {}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


def feed(tag: str, text: str, step: int = 3) -> tuple[str, list[dict[str, Any]]]:
    p = ToolParser([WEATHER, TIME], tag)
    content, calls = "", []
    for i in range(0, len(text), step):
        c, t = p.add(text[i : i + step])
        calls += c
        content += t
    c, t = p.add("", done=True)
    return content + t, calls + c


def names(calls: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], int]]:
    return [(c["function"]["name"], c["function"]["arguments"], c["function"]["index"]) for c in calls]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_tagged_tool_call(step: int) -> None:
    content, calls = feed(
        "<tool_call>", 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', step
    )
    assert content == "Sure. " and names(calls) == [("get_weather", {"city": "Paris"}, 0)]
    assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) == 13


def test_bare_json_calls_and_no_argument_tools() -> None:
    assert names(feed("{", '{"name": "get_weather", "parameters": {"city": "X"}}')[1]) == [
        ("get_weather", {"city": "X"}, 0)
    ]
    content, calls = feed("{", '{"name": "get_time"} done')
    assert names(calls) == [("get_time", {}, 0)] and content == " done"
    _, calls = feed("[", '[{"name": "get_time"}, {"name": "get_weather", "arguments": {"city": "Y"}}]')
    assert names(calls) == [("get_time", {}, 0), ("get_weather", {"city": "Y"}, 1)]


def test_bare_json_only_counts_at_the_start_and_plain_text_passes() -> None:
    assert feed("{", 'Hello {"name": "get_time"}') == ('Hello {"name": "get_time"}', [])
    assert feed("{", '{"answer": 1}') == ('{"answer": 1}', [])
    assert feed("<tool_call>", "no tools <tool") == ("no tools <tool", [])


@pytest.mark.parametrize("step", [1, 2, 50])
def test_thinking_parser(step: int) -> None:
    text = "<think>\n hmm, ok \n</think>\n\nAnswer!"
    p = ThinkingParser()
    thinking = content = ""
    for i in range(0, len(text), step):
        a, b = p.add(text[i : i + step])
        thinking, content = thinking + a, content + b
    a, b = p.add("", done=True)
    assert (thinking + a, content + b) == ("hmm, ok", "Answer!")


def test_thinking_starts_inside_when_prompt_opened_it() -> None:
    p = ThinkingParser(prompt="<|assistant|><think>")
    assert p.add("plan</think>done", done=True) == ("plan", "done")


def test_think_values() -> None:
    assert parse_think(None).is_set is False
    assert parse_think("high").level == "high" and parse_think(False).enabled is False
    with pytest.raises(Exception, match="invalid think value"):
        parse_think("loud")


def test_formats() -> None:
    """The gateway only describes the constraint; the runner writes the grammar (tests/runner/test_constraints.py)."""
    assert constraint(None) is None and constraint("json").json
    assert json.loads(constraint({"type": "object"}).json_schema) == {"type": "object"}
    assert constraint("json", grammar='root ::= "x"').gbnf == 'root ::= "x"'
    t = thinking(("<think>", "</think>"), "prompt <think>\n", 64)
    assert (t.open, t.close, t.started, t.budget_tokens) == ("<think>", "</think>", True, 64)
    with pytest.raises(Exception, match="invalid format"):
        constraint("yaml")


def test_jinja_sandbox_refuses_internals_and_runaway_loops() -> None:
    with pytest.raises(Exception, match="template error"):
        render_jinja("{{ ''.__class__.__mro__ }}", {})
    with pytest.raises(Exception, match="template error"):
        render_jinja("{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}", {})
    assert render_jinja("{{ messages[0].content }}", {"messages": [{"content": "hi"}]}) == "hi"
