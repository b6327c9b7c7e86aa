"""tool_choice spellings of each surface, the runner spec they make, think levels per model.
(The boundary that keeps llama.cpp out of the gateway is an import-linter contract,
tests/test_boundaries.py.)"""

from __future__ import annotations

import json

import pytest

from corral.v1 import registry_pb2, runner_pb2
from services.gateway import toolchoice
from services.gateway.errors import HTTPError
from services.gateway.pipeline import parse_think, resolve_think
from services.gateway.prompts import Think, tool_format
from services.gateway.toolchoice import REQUIRED, ToolChoice, ToolFormat, from_anthropic, from_openai, spec

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


def test_openai_and_anthropic_spellings() -> None:
    assert from_openai(None) == from_openai("auto") == ToolChoice()
    assert from_openai("none").mode == "none" and from_openai("required").mode == REQUIRED
    assert from_openai({"type": "function", "function": {"name": "f"}}) == ToolChoice(REQUIRED, "f")
    assert from_openai({"type": "function", "name": "f"}) == ToolChoice(REQUIRED, "f")  # Responses API
    assert from_anthropic({"type": "any"}) == ToolChoice(REQUIRED)
    assert from_anthropic({"type": "tool", "name": "f"}) == ToolChoice(REQUIRED, "f")
    assert from_anthropic({"type": "none"}).mode == "none" and from_anthropic(None) == ToolChoice()
    for bad in ("always", {"type": "function"}, 3):
        with pytest.raises(HTTPError, match="invalid tool_choice"):
            from_openai(bad)
    with pytest.raises(HTTPError, match="invalid tool_choice"):
        from_anthropic({"type": "tool"})


def test_spec_for_each_mode() -> None:
    fmt = ToolFormat("<tool_call>", "</tool_call>")
    assert spec(ToolChoice(), [WEATHER], fmt) is None
    none = spec(ToolChoice("none"), [WEATHER], fmt)
    assert none is not None and none.mode == runner_pb2.TOOL_CHOICE_MODE_NONE and none.open_tag == "<tool_call>"
    assert spec(ToolChoice("none"), None, fmt) is None  # no tools, nothing to forbid
    req = spec(ToolChoice(REQUIRED), [WEATHER, TIME], fmt)
    assert req is not None and [t.name for t in req.tools] == ["get_weather", "get_time"]
    assert json.loads(req.tools[0].parameters_json)["properties"] == {"city": {"type": "string"}}
    assert req.tools[1].parameters_json == "" and req.close_tag == "</tool_call>"
    named = spec(ToolChoice(REQUIRED, "get_time"), [WEATHER, TIME], fmt)
    assert named is not None and [t.name for t in named.tools] == ["get_time"]
    with pytest.raises(HTTPError, match="not one of the request's tools"):
        spec(ToolChoice(REQUIRED, "nope"), [WEATHER], fmt)
    with pytest.raises(HTTPError, match="has no tools"):
        spec(ToolChoice(REQUIRED), [], fmt)


def test_tool_format_from_templates() -> None:
    qwen = registry_pb2.Model(
        template="{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{...}</tool_call>{{ end }}{{ end }}"
    )
    assert tool_format(qwen) == ToolFormat("<tool_call>", "</tool_call>", "arguments")
    llama = registry_pb2.Model(template='{{ if .ToolCalls }}{"name": "{{.Function.Name}}", "parameters": {}{{ end }}')
    assert tool_format(llama) == ToolFormat("{", "", "parameters")


def test_think_levels_per_model() -> None:
    plain = registry_pb2.Model(capabilities=["completion"])
    onoff = registry_pb2.Model(capabilities=["completion", "thinking"], template="{{ .Thinking }}")
    levels = registry_pb2.Model(capabilities=["completion", "thinking"], template="{{ .ThinkLevel }}{{ .Thinking }}")
    assert resolve_think(levels, "oss", parse_think("high")) == Think(True, "high", True)
    assert resolve_think(onoff, "qwen", parse_think(True)).enabled
    with pytest.raises(HTTPError, match='"qwen" does not support think levels'):
        resolve_think(onoff, "qwen", parse_think("low"))
    with pytest.raises(HTTPError, match='"oss" does not support think level "max" \\(supported: low, medium, high\\)'):
        resolve_think(levels, "oss", parse_think("max"))
    with pytest.raises(HTTPError, match='"gemma" does not support thinking'):
        resolve_think(plain, "gemma", parse_think("high"))
    assert resolve_think(onoff, "qwen", parse_think("high"), coerce_level=True) == Think(True, "", True)
    assert toolchoice.AUTO == "auto"
