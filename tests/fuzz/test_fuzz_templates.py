"""The Go-template interpreter and the Jinja sandbox on generated templates: text or a
template error (400), never another exception, unbounded memory or a long render."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.errors import HTTPError
from services.gateway.prompts import render_jinja
from services.gateway.templates import TemplateError
from services.gateway.templates import ollama as gotmpl
from services.gateway.templates.engine import Template
from tests.fuzz.bounds import bounded

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi {{ there }} {% x %}"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
    {"role": "tool", "content": "42", "tool_name": "f"},
    {"role": "user", "content": "And?" * 50},
]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]

GO = [
    "{{", "}}", "{{-", "-}}", " ", "if", "else", "else if", "end", "range", "with", "define", "template",
    "block", "break", "continue", ".", ".Messages", ".System", ".Prompt", ".Response", ".Tools", ".Role",
    ".Content", ".ToolCalls", ".Function", ".Arguments", "$", "$i", "$m", ":=", "=", ",", "|", "(", ")",
    "printf", '"%s"', '"%0999999999d"', "len", "index", "slice", "eq", "ne", "lt", "and", "or", "not",
    "json", "html", "js", "print", "call", "currentDate", '"x"', "1", "-1", "99999999999", "nil", "true",
    "$.Messages", "$last", "Think", ".IsThinkSet", "/*", "*/", "\n", "text",
]  # fmt: skip

JINJA = [
    "{{", "}}", "{%", "%}", "{%-", "-%}", "{#", "#}", " ", "for", "in", "if", "elif", "else", "endif",
    "endfor", "set", "macro", "endmacro", "call", "filter", "endfilter", "messages", "message", "tools",
    "message['content']", "message.role", "loop.index", "loop.last", "range(", "range(100000)", ")", "(",
    ",", "[", "]", "*", "**", "%", "~", "+", "-", "/", "//", "9", "99999", "999999999", "'ab'", '"%0999d"',
    "'{:>99999999}'", "|", "join", "replace", "center", "format", "length", "tojson", "indent", "upper",
    "namespace(", "ns", "ns.s", "=", "raise_exception(", "strftime_now(", "'%Y'", "bos_token", ".__class__",
    "__globals__", "cycler(", "dict(", "lipsum", "ljust", ".format(", "true", "none", "not", "and",
]  # fmt: skip


def _go(source: str) -> None:
    with bounded(seconds=10):
        try:
            tmpl = Template(source)
            tmpl.execute({"Messages": MESSAGES, "System": "s", "Prompt": "p", "Tools": TOOLS})
            gotmpl.render(source, MESSAGES, tools=TOOLS, think=True)
        except TemplateError as err:
            assert str(err)


def _jinja(source: str) -> None:
    with bounded(seconds=10):
        try:
            render_jinja(source, {"messages": MESSAGES, "tools": TOOLS, "bos_token": "<s>"})
        except HTTPError as err:
            assert err.status == 400 and err.message.startswith("template error"), err.message


@given(st.lists(st.sampled_from(GO) | st.text(max_size=4), max_size=30))
def test_go_template(tokens: list[str]) -> None:
    _go(" ".join(tokens))
    _go("".join(tokens))


@given(st.text(max_size=200))
def test_go_template_any_text(text: str) -> None:
    _go(text)
    _go("{{ " + text + " }}")


@given(st.lists(st.sampled_from(JINJA) | st.text(max_size=4), max_size=30))
def test_jinja_template(tokens: list[str]) -> None:
    _jinja(" ".join(tokens))
    _jinja("{{ " + " ".join(tokens) + " }}")


@given(
    st.sampled_from(["'ab'", "[1, 2]", "ns.s", "message['content']"]),
    st.sampled_from(["*", "~", "+", "%", "**"]),
    st.sampled_from(["2", "99999999", "ns.s", "'x'", "(1,)", "9999"]),
    st.integers(1, 64),
)
def test_jinja_growth_in_a_loop(left: str, op: str, right: str, rounds: int) -> None:
    """Values grown step by step (doubling, repeating) hit the size limit, not the memory."""
    _jinja(
        "{% set ns = namespace(s='ab') %}{% for message in messages * 20 %}{% for i in range("
        + str(rounds)
        + ") %}{% set ns.s = "
        + f"{left} {op} {right}"
        + " %}{% endfor %}{% endfor %}{{ ns.s | length }}"
    )
