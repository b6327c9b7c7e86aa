"""Structured outputs: what the output must look like, sent to the runner as a
GenerateRequest.constraint (the runner writes the GBNF grammar; the gateway never
imports llama.cpp). Precedence: a raw `grammar`, then a forced or forbidden tool
call (`tool_choice`), then `format`.
"""

from __future__ import annotations

import json
from typing import Any

from corral.v1 import runner_pb2
from services.gateway.errors import bad_request

MAX_GRAMMAR_CHARS = 256 * 1024


def invalid_format(fmt: Any) -> Exception:
    return bad_request(
        f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON Schema object', "invalid_format"
    )


def check_grammar(grammar: Any) -> str:
    """The request's raw GBNF `grammar` ("" = none); the runner checks the syntax."""
    if grammar is None or grammar == "":
        return ""
    if not isinstance(grammar, str):
        raise bad_request("invalid grammar: must be a string of GBNF rules", "invalid_grammar")
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise bad_request(f"invalid grammar: longer than {MAX_GRAMMAR_CHARS} characters", "invalid_grammar")
    return grammar


def constraint(
    fmt: Any, grammar: str = "", tool_calls: runner_pb2.ToolCallSpec | None = None
) -> runner_pb2.Constraint | None:
    if grammar:
        return runner_pb2.Constraint(gbnf=grammar)
    if tool_calls is not None:
        return runner_pb2.Constraint(tool_calls=tool_calls)
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return runner_pb2.Constraint(json=True)
    if isinstance(fmt, dict):
        return runner_pb2.Constraint(json_schema=json.dumps(fmt))
    raise invalid_format(fmt)


def thinking(tags: tuple[str, str], prompt: str, budget_tokens: int = 0) -> runner_pb2.ThinkingSpec:
    """The thinking block the output opens with; `started` when the prompt already opened it."""
    return runner_pb2.ThinkingSpec(
        open=tags[0], close=tags[1], started=prompt.rstrip().endswith(tags[0]), budget_tokens=budget_tokens
    )
