"""The Go-template interpreter and Ollama's rendering rules, without gRPC."""

from __future__ import annotations

import time

import pytest

from services.gateway.templates import Template, TemplateError
from services.gateway.templates.ollama import collate, render, thinking_tags, tool_tag

CHATML = """{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>{{ .Content }}{{ if not $last }}<|end|>{{ end }}
{{ end }}{{ if .Tools }}TOOLS {{ .Tools }}{{ end }}"""


def test_trimming_comments_and_literals() -> None:
    t = Template('a  {{- "x" -}}  b {{/* gone */}}c{{- /* trimmed */ -}}  d {{ 3 }} {{ true }} {{ `r` }}')
    assert t.execute({}) == "axb cd 3 true r"


def test_if_else_chain_and_logic() -> None:
    t = Template('{{ if and .A (not .B) }}1{{ else if or .B .C }}2{{ else }}3{{ end }}{{ if eq .S "x" "y" }}!{{ end }}')
    assert t.execute({"A": 1}) == "1"
    assert t.execute({"B": True, "S": "y"}) == "2!"
    assert t.execute({}) == "3"


def test_range_with_index_last_and_json() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    out = render(CHATML, msgs, tools=[{"type": "function", "function": {"name": "f"}}])
    assert out == '<|user|>hi<|end|>\n<|assistant|>yo\nTOOLS [{"type":"function","function":{"name":"f"}}]'


def test_variables_scope_and_dollar() -> None:
    t = Template("{{ $x := 1 }}{{ range .L }}{{ $x = . }}{{ $.N }}{{ end }}{{ $x }}{{ with .W }}{{ . }}{{ end }}")
    assert t.execute({"L": [2, 3], "N": "n", "W": "w"}) == "nn3w"


def test_go_field_names_map_to_json_keys() -> None:
    t = Template(
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}"
        "{{ .ToolCallID }}{{ end }}"
    )
    data = {"Messages": [{"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}], "tool_call_id": "c1"}]}
    assert t.execute(data) == 'f{"a":1}c1'


def test_legacy_template_runs_per_turn_and_cuts_after_response() -> None:
    legacy = "{{ if .System }}[S]{{ .System }}{{ end }}{{ if .Prompt }}[U]{{ .Prompt }}{{ end }}[A]{{ .Response }}[/A]"
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert render(legacy, msgs) == "[S]s[U]a[A]b[/A][U]c\n\nd[A]"


def test_collate_merges_same_roles_but_not_tools() -> None:
    system, msgs = collate(
        [
            {"role": "system", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
        ]
    )
    assert system == "a\n\nb" and [m["content"] for m in msgs] == ["a\n\nb", "1", "2"]


def test_tags_from_templates() -> None:
    tmpl = (
        "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
        "{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{}{{ end }}{{ end }}{{ end }}"
    )
    assert tool_tag(tmpl) == "<tool_call>"
    assert thinking_tags(tmpl) == ("<think>", "</think>")
    assert tool_tag('{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": 1}{{ end }}{{ end }}') == "{"
    assert tool_tag("{{ .Prompt }}") == "{"


@pytest.mark.parametrize(
    "source",
    [
        "{{ .__class__ }}",
        "{{ .Messages._x }}",
        '{{ template "t" }}',
        '{{ define "t" }}x{{ end }}',
        "{{ if .A }}",
        "{{ end }}",
        "{{ .A",
        "{{ nosuchfunc 1 }}",
    ],
)
def test_hostile_or_broken_templates_fail_before_or_while_running(source: str) -> None:
    with pytest.raises(TemplateError):
        Template(source).execute({"A": 1, "Messages": []})


@pytest.mark.parametrize(
    "source",
    [
        "{{ range 1000000000 }}{{ end }}",
        "{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}",
        "{{ range 100000 }}{{ $.Big }}{{ end }}",
    ],
)
def test_runaway_templates_are_bounded(source: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError):
        Template(source).execute({"Big": "x" * 10_000})
    assert time.monotonic() - start < 5
