"""Structured output → GBNF: JSON, JSON Schema, raw GBNF, and tool calls forced or forbidden.

The gateway says WHAT the output must look like (GenerateRequest.constraint) and which
thinking block may come first (GenerateRequest.thinking); the runner writes the grammar.
With thinking on, the grammar lets the thinking block through unconstrained and only
constrains what follows it, so one pass does both. A raw GBNF grammar is used as given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from corral.errors import CorralError
from corral.v1 import common_pb2

REQUIRED = "required"
NONE = "none"
_WS = "[ \\t\\n]{0,4}"  # bounded: a small model will happily emit newlines forever


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters_json: str = ""  # JSON Schema of the arguments; empty = no arguments


@dataclass(frozen=True)
class ToolCalls:
    mode: str  # REQUIRED | NONE
    tools: tuple[ToolSpec, ...] = ()
    open_tag: str = "{"  # "{" / "[" / "" = bare JSON
    close_tag: str = ""
    arguments_key: str = "arguments"


@dataclass(frozen=True)
class Constraint:
    """At most one field is set (the proto's oneof)."""

    json_schema: str = ""
    json: bool = False
    gbnf: str = ""
    tool_calls: ToolCalls | None = None


@dataclass(frozen=True)
class Thinking:
    open: str = "<think>"
    close: str = "</think>"
    started: bool = False  # the prompt ends with `open`
    budget_tokens: int = 0  # > 0: the runner closes the block after this many tokens


@dataclass(frozen=True)
class Resolved:
    """What a sequence needs: the grammar (may be empty) and the thinking block, if any."""

    gbnf: str = ""
    thinking: Thinking | None = field(default=None)


def _invalid(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, msg)


def _lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _not(ch: str) -> str:
    return f"[^\\u{ord(ch):04x}]" if ord(ch) < 0x10000 else f"[^{ch}]"


def _not2(a: str, b: str) -> str:
    if a == b:
        return _not(a)
    return f"[^\\u{ord(a):04x}\\u{ord(b):04x}]"


def free_text_until(close: str) -> str:
    """A GBNF expression for any text that does not contain `close`."""
    alts = [_not(close[0])]
    for k in range(1, len(close)):
        alts.append(f"{_lit(close[:k])} {_not2(close[k], close[0])}")
    return "(" + " | ".join(alts) + ")*"


def _rename_root(grammar: str, name: str) -> str:
    return re.sub(r"^root(\s*)::=", rf"{name}\1::=", grammar, count=1, flags=re.M)


def with_thinking(grammar: str, t: Thinking) -> str:
    """Prefix `grammar` with a free thinking block (optional unless the prompt opened it)."""
    body = _rename_root(grammar, "answer")
    block = f"think-body {_lit(t.close)} {_WS}"
    root = f"root ::= {block} answer" if t.started else f"root ::= ({_lit(t.open)} {_WS} {block})? answer"
    return f"{root}\nthink-body ::= {free_text_until(t.close)}\n{body}"


def schema_to_gbnf(schema: str) -> str:
    """JSON Schema text → GBNF (llama-cpp-python's port of llama.cpp's converter)."""
    try:
        json.loads(schema)
    except ValueError as err:
        raise _invalid(f"json_schema is not valid JSON: {err}") from None
    try:
        return json_schema_to_gbnf(schema)
    except Exception as err:  # the converter raises assorted types on unsupported schemas
        raise _invalid(f"unsupported json_schema: {err}") from None


def _parameters(tool: ToolSpec) -> dict[str, Any]:
    if not tool.parameters_json:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    try:
        params = json.loads(tool.parameters_json)
    except ValueError as err:
        raise _invalid(f"parameters of tool {tool.name!r} are not valid JSON: {err}") from None
    if not isinstance(params, dict):
        raise _invalid(f"parameters of tool {tool.name!r} must be a JSON Schema object")
    if not params.get("properties") and params.get("type") in (None, "object") and "anyOf" not in params:
        # a tool without parameters takes exactly {} (a bare "object" would let the model invent keys)
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return params


def call_schema(tc: ToolCalls) -> dict[str, Any]:
    """One call object: {"name": <one of the tools>, "<arguments_key>": <that tool's arguments>}."""
    key = tc.arguments_key or "arguments"
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, key: _parameters(t)},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for t in tc.tools
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_calls_gbnf(tc: ToolCalls) -> str:
    """REQUIRED: only calls, in the model's format; NONE: anything but the start of a call."""
    tag = tc.open_tag.strip()
    bare = tag in ("", "{", "[")
    if tc.mode == NONE:
        if bare:
            return f"root ::= {_WS} ([^ \\t\\n{{[] [^\\x00]*)?\n"
        return f"root ::= {free_text_until(tag)}\n"
    if tc.mode != REQUIRED:
        raise _invalid(f"unknown tool choice mode {tc.mode!r}")
    if not tc.tools:
        raise _invalid("a required tool call needs at least one tool")
    call = _rename_root(schema_to_gbnf(json.dumps(call_schema(tc))), "call")
    if tag == "[":
        root = f'root ::= "[" {_WS} call ({_WS} "," {_WS} call)* {_WS} "]"'
    elif bare:
        root = "root ::= call"
    else:
        close = f" {_WS} {_lit(tc.close_tag.strip())}" if tc.close_tag.strip() else ""
        root = f"root ::= one-call ({_WS} one-call)*\none-call ::= {_lit(tag)} {_WS} call{close}"
    return f"{root}\n{call}"


def answer_gbnf(c: Constraint) -> str:
    if c.tool_calls is not None:
        return tool_calls_gbnf(c.tool_calls)
    if c.json:
        return JSON_GBNF
    if c.json_schema:
        return schema_to_gbnf(c.json_schema)
    return ""


def resolve(
    constraint: Constraint | None, thinking: Thinking | None, legacy_grammar: str = "", legacy_schema: str = ""
) -> Resolved:
    """The grammar for a request. A raw GBNF covers the whole output; any other constraint
    is wrapped so a thinking block may come first. Without `constraint`, the older
    `json_schema`/`grammar` fields apply as before."""
    if constraint is None or constraint == Constraint():
        gbnf = schema_to_gbnf(legacy_schema) if legacy_schema else legacy_grammar
        return Resolved(gbnf, thinking)
    if constraint.gbnf:
        check_gbnf(constraint.gbnf)
        return Resolved(constraint.gbnf, thinking)
    gbnf = answer_gbnf(constraint)
    if thinking is not None and gbnf:
        gbnf = with_thinking(gbnf, thinking)
    return Resolved(gbnf, thinking)


_NAME = re.compile(r"[a-zA-Z0-9-]+")
_REPEAT = re.compile(r"\{\s*\d*\s*(,\s*\d*\s*)?\}")


def _line_col(text: str, i: int) -> str:
    line = text.count("\n", 0, i) + 1
    return f"line {line}, column {i - (text.rfind(chr(10), 0, i) + 1) + 1}"


def _skip_quoted(text: str, i: int, end: str) -> int:
    """Index after the closing `end` of a literal or class starting at i (just after the opener); -1 if none."""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == end:
            return i + 1
        elif c == "\n" and end == '"':
            return -1
        else:
            i += 1
    return -1


def gbnf_error(text: str) -> str | None:
    """What is wrong with a GBNF grammar (llama.cpp prints its own reason to stderr only), or None."""
    defined: set[str] = set()
    refs: list[tuple[str, int]] = []
    depth, i, n = 0, 0, len(text)
    saw_rule = False
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in '"[':
            j = _skip_quoted(text, i + 1, '"' if c == '"' else "]")
            if j < 0:
                kind = "string literal" if c == '"' else "character class"
                return f"unterminated {kind} at {_line_col(text, i)}"
            i = j
        elif c == "(":
            depth, i = depth + 1, i + 1
        elif c == ")":
            if depth == 0:
                return f"unbalanced ')' at {_line_col(text, i)}"
            depth, i = depth - 1, i + 1
        elif c in "|*+?.":
            i += 1
        elif c == "{":
            m = _REPEAT.match(text, i)
            if not m:
                return f"malformed repetition at {_line_col(text, i)}"
            i = m.end()
        elif m := _NAME.match(text, i):
            after = text[m.end() :].lstrip(" \t")
            if after.startswith("::="):
                if depth:
                    return f"unbalanced '(' before rule {m.group()!r}"
                defined.add(m.group())
                saw_rule = True
                i = text.index("::=", m.end()) + 3
            elif not saw_rule:
                return f"expected a rule definition (name ::= ...) at {_line_col(text, i)}"
            else:
                refs.append((m.group(), i))
                i = m.end()
        else:
            return f"unexpected {c!r} at {_line_col(text, i)}"
    if depth:
        return "unbalanced '(' at the end of the grammar"
    if "root" not in defined:
        return "the grammar has no 'root' rule"
    for name, pos in refs:
        if name not in defined:
            return f"undefined rule {name!r} at {_line_col(text, pos)}"
    return None


def check_gbnf(text: str) -> None:
    if not text.strip():
        raise _invalid("invalid grammar: the grammar is empty")
    if (err := gbnf_error(text)) is not None:
        raise _invalid(f"invalid grammar: {err}")
