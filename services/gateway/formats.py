"""Structured outputs: `format` ("json" or a JSON Schema) to a GBNF grammar for the runner.

With thinking on, the grammar lets the thinking block through unconstrained and only
constrains what follows it, so one pass does both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from corral.v1 import runner_pb2
from services.gateway.errors import bad_request

# The runner engineer is adding GenerateRequest.json_schema; use it once it exists.
RUNNER_HAS_JSON_SCHEMA = "json_schema" in runner_pb2.GenerateRequest.DESCRIPTOR.fields_by_name


@dataclass(frozen=True)
class Constraint:
    grammar: str = ""
    json_schema: str = ""


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


def with_thinking(grammar: str, tags: tuple[str, str], started: bool) -> str:
    """Prefix `grammar` with a free thinking block (optional unless the prompt opened it)."""
    body = re.sub(r"^root(\s*)::=", r"answer\1::=", grammar, count=1, flags=re.M)
    open_tag, close_tag = tags
    block = f"think-body {_lit(close_tag)} [ \\t\\n]*"
    root = f"root ::= {block} answer" if started else f"root ::= ({_lit(open_tag)} [ \\t\\n]* {block})? answer"
    return f"{root}\nthink-body ::= {free_text_until(close_tag)}\n{body}"


def invalid_format(fmt: Any) -> Exception:
    return bad_request(
        f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON Schema object', "invalid_format"
    )


def constraint(fmt: Any, thinking: tuple[str, str] | None = None, started: bool = False) -> Constraint:
    """`thinking` is the tag pair when the output starts with a free thinking block."""
    if fmt is None or fmt == "":
        return Constraint()
    if fmt == "json":
        grammar = JSON_GBNF
    elif isinstance(fmt, dict):
        if RUNNER_HAS_JSON_SCHEMA and thinking is None:
            return Constraint(json_schema=json.dumps(fmt))
        try:
            grammar = json_schema_to_gbnf(json.dumps(fmt))
        except Exception as exc:  # the converter raises assorted errors on odd schemas
            raise invalid_format(fmt) from exc
    else:
        raise invalid_format(fmt)
    if thinking is not None:
        grammar = with_thinking(grammar, thinking, started)
    return Constraint(grammar=grammar)


def apply(req: runner_pb2.GenerateRequest, c: Constraint) -> None:
    if c.json_schema:
        req.json_schema = c.json_schema  # type: ignore[attr-defined,unused-ignore]
    elif c.grammar:
        req.grammar = c.grammar
