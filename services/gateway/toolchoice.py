"""`tool_choice`, enforced by grammar in the runner.

Every surface turns its own spelling into a ToolChoice; `spec()` makes the runner's
ToolCallSpec from it, the request's tools and the model's tool-call format (from its
template, the same format the ToolParser reads back):

- auto: no constraint (the model decides).
- none: the tools stay in the prompt, but the grammar forbids opening a call and no
  call is parsed.
- required: the output is one or more calls to the tools, in the model's format.
- a named function: as required, with that tool only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.v1 import runner_pb2
from services.gateway.errors import bad_request

AUTO, NONE, REQUIRED = "auto", "none", "required"


@dataclass(frozen=True)
class ToolChoice:
    mode: str = AUTO  # auto | none | required
    name: str = ""  # with required: the only tool allowed


@dataclass(frozen=True)
class ToolFormat:
    """How the model writes a call (prompts.tool_format reads it from the template)."""

    open_tag: str = "{"
    close_tag: str = ""
    arguments_key: str = "arguments"


def _invalid(msg: str) -> Exception:
    return bad_request(msg, "invalid_tool_choice")


def from_openai(value: Any) -> ToolChoice:
    """Chat Completions and Responses: "auto" | "none" | "required" |
    {"type": "function", "function": {"name": ...}} | {"type": "function", "name": ...}."""
    if value is None or value == AUTO:
        return ToolChoice()
    if value in (NONE, REQUIRED):
        return ToolChoice(value)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in (AUTO, NONE, REQUIRED) and len(value) == 1:
            return from_openai(kind)
        inner = value.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else value
        name = fn.get("name")
        if kind == "function" and isinstance(name, str) and name:
            return ToolChoice(REQUIRED, name)
    raise _invalid(
        f'invalid tool_choice: {json.dumps(value)}; expected "auto", "none", "required" or '
        '{"type": "function", "function": {"name": ...}}'
    )


def from_anthropic(value: Any) -> ToolChoice:
    """Messages: {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}."""
    if value is None:
        return ToolChoice()
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in (AUTO, NONE):
        return ToolChoice(kind)
    if kind == "any":
        return ToolChoice(REQUIRED)
    if kind == "tool" and isinstance(value.get("name"), str) and value["name"]:
        return ToolChoice(REQUIRED, value["name"])
    raise _invalid(f"invalid tool_choice: {json.dumps(value)}; expected type auto, any, none, or tool with a name")


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, dict) else {}


def spec(choice: ToolChoice, tools: list[dict[str, Any]] | None, fmt: ToolFormat) -> runner_pb2.ToolCallSpec | None:
    """The runner's constraint for `choice`; None for auto. 400 when the choice cannot be met."""
    if choice.mode == AUTO:
        return None
    fns = [_function(t) for t in tools or []]
    fns = [f for f in fns if isinstance(f.get("name"), str) and f["name"]]
    out = runner_pb2.ToolCallSpec(open_tag=fmt.open_tag, close_tag=fmt.close_tag, arguments_key=fmt.arguments_key)
    if choice.mode == NONE:
        out.mode = runner_pb2.TOOL_CHOICE_MODE_NONE
        return out if fns else None
    if not fns:
        raise _invalid("tool_choice requires a tool call, but the request has no tools")
    if choice.name:
        fns = [f for f in fns if f["name"] == choice.name]
        if not fns:
            raise _invalid(f"tool_choice names {choice.name!r}, which is not one of the request's tools")
    out.mode = runner_pb2.TOOL_CHOICE_MODE_REQUIRED
    out.tools.extend(
        [
            runner_pb2.ToolSchema(
                name=f["name"], parameters_json=json.dumps(f["parameters"]) if f.get("parameters") else ""
            )
            for f in fns
        ]
    )
    return out
