"""Tool calls parsed out of streamed model output (Ollama's generic tools.Parser).

The tag that opens a call comes from the template (`{{ if .ToolCalls }}<tag>…`); a tag
of `{` or `[` means bare JSON, which is only treated as a call when the output starts
with it. After the tag, each call is a tool name followed by a JSON object holding its
arguments (`arguments`/`parameters` keys, the tool name as a key, or the object itself).
Tools without parameters need no object (Ollama's TODO): they are emitted at the end.
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

_ALPHABET = string.ascii_lowercase + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def tool_names(tools: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(name, has_parameters) for each function tool."""
    out = []
    for t in tools:
        fn = t.get("function") or {}
        name = fn.get("name")
        if isinstance(name, str) and name:
            props = ((fn.get("parameters") or {}).get("properties")) or {}
            out.append((name, bool(props)))
    return out


def _find_tool(tools: list[tuple[str, bool]], buf: str, final: bool) -> tuple[str, bool, int] | None:
    """Earliest (then longest) tool name in `buf`; None while the tail could still grow into a longer name."""
    if not final:
        longest = max((len(n) for n, _ in tools), default=0)
        for i in range(1, min(len(buf), longest) + 1):
            tail = buf[-i:]
            if any(len(tail) < len(n) and n.startswith(tail) for n, _ in tools):
                return None
    best: tuple[str, bool, int] | None = None
    best_pos = -1
    for name, has_params in tools:
        pos = buf.find(name)
        if pos < 0:
            continue
        if best is not None and (pos > best_pos or (pos == best_pos and len(name) <= len(best[0]))):
            continue
        best, best_pos = (name, has_params, pos + len(name)), pos
    return best


def _as_args(v: Any) -> dict[str, Any] | None:
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        try:
            parsed = json.loads(v)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _find_in(obj: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, bool]:
    if "name" in obj:
        for key in ("arguments", "parameters"):
            if (args := _as_args(obj.get(key))) is not None:
                return args, True
        return None, True
    if (args := _as_args(obj.get(name))) is not None:
        return args, True
    for v in obj.values():
        children = v if isinstance(v, list) else [v]
        for child in children:
            if isinstance(child, dict):
                found, ok = _find_in(child, name)
                if ok:
                    return found, True
    return None, False


def json_end(buf: str) -> int:
    """Index just after the first balanced JSON object/array in `buf`, or -1."""
    depth, in_str, esc = 0, False, False
    for i, c in enumerate(buf):
        if esc:
            esc = False
        elif in_str:
            esc = c == "\\"
            in_str = c != '"'
        elif c == '"' and depth:
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]" and depth:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def find_arguments(name: str, buf: str) -> tuple[dict[str, Any] | None, int]:
    """Arguments from the first complete JSON object in `buf`, and the index after it.
    Quotes only count inside an object: `buf` usually starts mid-string (after the name)."""
    start = 0
    while (i := buf.find("{", start)) >= 0:
        end = json_end(buf[i:])
        if end < 0:
            return None, 0
        try:
            data = json.loads(buf[i : i + end])
        except json.JSONDecodeError:
            start = i + 1
            continue
        if not isinstance(data, dict):
            start = i + 1
            continue
        if "name" in data and data["name"] != name:
            return None, -1  # the next call's object, not this one's arguments
        found, ok = _find_in(data, name)
        return (found if ok and found is not None else ({} if ok else data)), i + end
    return None, 0


class ToolParser:
    def __init__(self, tools: list[dict[str, Any]], tag: str = "{") -> None:
        self.tools = tool_names(tools)
        self.tag = tag
        self.bare = tag in ("{", "[")
        self.buf = ""
        self.state = "looking"  # looking | calling | done
        self.index = 0
        self.emitted_any = False
        self.raw = ""  # everything since the tag, to see where bare JSON closes

    def add(self, text: str, done: bool = False) -> tuple[list[dict[str, Any]], str]:
        """Feed a chunk; returns (tool calls, content) ready to emit."""
        if self.state == "done" or not self.tools:
            out, self.buf = self.buf + text, ""
            return [], out
        self.buf += text
        content = ""
        if self.state == "calling":
            self.raw += text
        else:
            i = self.buf.find(self.tag)
            if i >= 0:
                content, self.buf = self.buf[:i], self.buf[i:]
            else:
                keep = 0 if done else _overlap(self.buf, self.tag)
                content, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
            if self.bare and content.strip():
                self.state = "done"  # bare JSON only counts at the very start
                out, self.buf = content + self.buf, ""
                return [], out
            if i < 0:
                if done:
                    content, self.buf = content + self.buf, ""
                return [], content
            self.state = "calling"
            self.raw = self.buf
            if not self.bare:
                self.buf = self.buf[len(self.tag) :]
        closed = json_end(self.raw) if self.bare else -1
        final = done or closed >= 0
        calls = []
        while (call := self._parse(final)) is not None:
            calls.append(call)
        if closed >= 0:
            self.state = "done"
            content += self.raw[closed:] if self.emitted_any else self.raw
            self.buf = ""
        elif done:
            if not self.emitted_any:
                content += (self.tag if not self.bare else "") + self.buf
            self.buf = ""
        return calls, content

    def _parse(self, final: bool) -> dict[str, Any] | None:
        found = _find_tool(self.tools, self.buf, final)
        if found is None:
            return None
        name, has_params, end = found
        args, n = find_arguments(name, self.buf[end:])
        if args is None:
            if has_params or not (final or n < 0):
                return None
            args, n = {}, 0
        end += max(n, 0)
        self.buf = self.buf[end:]
        call = {"id": call_id(), "function": {"index": self.index, "name": name, "arguments": args}}
        self.index += 1
        self.emitted_any = True
        return call


def _overlap(text: str, tag: str) -> int:
    for n in range(min(len(text), len(tag)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
