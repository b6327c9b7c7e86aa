"""Ollama's use of Go templates (template/template.go): message collation, the
messages-mode and legacy per-turn execution, and the tags that the tool and
thinking parsers read out of a template."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from services.gateway.templates.engine import Template
from services.gateway.templates.parse import Action, Branch, Field, Node, Pipe, Text


@lru_cache(maxsize=64)
def compile_template(source: str) -> Template:
    return Template(source)


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Merge consecutive same-role messages (never tool results); `.System` joins all system messages."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            system.append(m.get("content") or "")
        if out and out[-1].get("role") == role and role != "tool":
            out[-1] = {**out[-1], "content": (out[-1].get("content") or "") + "\n\n" + (m.get("content") or "")}
            continue
        out.append(dict(m))
    return "\n\n".join(system), out


def _template_message(m: dict[str, Any]) -> dict[str, Any]:
    out = {
        "role": m.get("role", ""),
        "content": m.get("content") or "",
        "thinking": m.get("thinking") or "",
        "images": m.get("images") or [],
        "tool_calls": m.get("tool_calls") or [],
        "tool_name": m.get("tool_name") or "",
        "tool_call_id": m.get("tool_call_id") or "",
    }
    return out


def render(
    source: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    think: bool = False,
    think_level: str = "",
    is_think_set: bool = False,
) -> str:
    tmpl = compile_template(source)
    system, msgs = collate(messages)
    think_vars = {"Think": think, "ThinkLevel": think_level, "IsThinkSet": is_think_set}
    if "messages" in tmpl.vars:
        return tmpl.execute(
            {
                "System": system,
                "Messages": [_template_message(m) for m in msgs],
                "Tools": tools or [],
                "Response": "",
                **think_vars,
            }
        )
    return _render_legacy(tmpl, msgs, think_vars)


def render_fim(source: str, prompt: str, suffix: str) -> str:
    return compile_template(source).execute({"Prompt": prompt, "Suffix": suffix, "Response": ""})


def _render_legacy(tmpl: Template, msgs: list[dict[str, Any]], think_vars: dict[str, Any]) -> str:
    """One execution per (system, user, assistant) turn; the last one stops right after
    `{{ .Response }}` so the model continues from there."""
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute() -> None:
        parts.append(tmpl.execute({**turn, **think_vars}))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        role, content = m.get("role"), m.get("content") or ""
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                execute()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                execute()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    cut = _cut_after_response(tmpl.tree.nodes)
    parts.append(tmpl.execute({**turn, **think_vars}, nodes=cut))
    return "".join(parts)


def _mentions(pipe: Pipe, name: str) -> bool:
    return any(isinstance(a, Field) and name in a.names for c in pipe.cmds for a in c.args)


def _cut_after_response(nodes: list[Node]) -> list[Node]:
    """Go's deleteNode: keep the tree up to and including the first `.Response` output."""
    cut = False

    def walk(list_: list[Node]) -> list[Node]:
        nonlocal cut
        out: list[Node] = []
        for n in list_:
            if cut:
                continue
            if isinstance(n, Action) and _mentions(n.pipe, "Response"):
                cut = True
                out.append(n)
            elif isinstance(n, Branch):
                b = copy.copy(n)
                b.body = walk(n.body)
                if n.else_body is not None:
                    b.else_body = walk(n.else_body)
                out.append(b)
            else:
                out.append(n)
        return out

    return walk(nodes)


def _walk(nodes: list[Node]) -> list[Node]:
    out: list[Node] = []
    for n in nodes:
        out.append(n)
        if isinstance(n, Branch):
            out.extend(_walk(n.body))
            out.extend(_walk(n.else_body or []))
    return out


def _first_text(nodes: list[Node]) -> str | None:
    for n in _walk(nodes):
        if isinstance(n, Text):
            return n.text
    return None


def tool_tag(source: str) -> str:
    """The text that opens a tool call: the first text inside `{{ if .ToolCalls }}`, cut
    at `{`; `{` means bare JSON (Ollama's tools.parseTag)."""
    tmpl = compile_template(source)
    for n in _walk(tmpl.tree.nodes):
        if isinstance(n, Branch) and n.kind == "if" and _mentions(n.pipe, "ToolCalls"):
            text = _first_text(n.body)
            if text is None:
                return "{"
            tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
            return tag or "{"
    return "{"


def thinking_tags(source: str) -> tuple[str, str] | None:
    """The texts around `{{ .Thinking }}` in the messages loop, e.g. ("<think>", "</think>")."""
    tmpl = compile_template(source)
    flat = _walk(tmpl.tree.nodes)
    for i, n in enumerate(flat):
        if isinstance(n, Action) and any(
            isinstance(a, Field) and a.names[-1:] == ["Thinking"] for c in n.pipe.cmds for a in c.args
        ):
            before = next((x.text for x in reversed(flat[:i]) if isinstance(x, Text) and x.text.strip()), "")
            after = next((x.text for x in flat[i + 1 :] if isinstance(x, Text) and x.text.strip()), "")
            open_tag = before.strip().splitlines()[-1].strip() if before.strip() else ""
            close_tag = after.strip().splitlines()[0].strip() if after.strip() else ""
            if open_tag and close_tag:
                return open_tag, close_tag
    return None
