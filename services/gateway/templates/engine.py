"""A bounded interpreter for the parsed template tree.

Data is plain JSON-like Python values (dicts, lists, scalars). Field access is a
dict lookup only, never getattr, so a template cannot reach Python internals. Go
field names map onto JSON keys (`.ToolCalls` finds `tool_calls`). Execution is
bounded by a step budget, a wall-clock deadline and an output cap.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

from services.gateway.templates.parse import (
    Action,
    Branch,
    Control,
    Dot,
    Field,
    Ident,
    Literal,
    Node,
    Pipe,
    TemplateError,
    Text,
    Tree,
    parse,
)

MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_STEPS = 2_000_000
MAX_SECONDS = 2.0

__all__ = ["Template", "TemplateError", "to_string"]


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def lookup(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict):
        if obj is None:
            return None
        raise TemplateError(f"can't evaluate field {name} in type {_type(obj)}")
    if name in obj:
        return obj[name]
    for key in (name[:1].lower() + name[1:], _snake(name), "$" + name.lower()):
        if key in obj:
            return obj[key]
    return None  # missingkey=zero


def _type(v: Any) -> str:
    return {dict: "map", list: "slice", str: "string", bool: "bool", int: "int", float: "float64"}.get(
        type(v), type(v).__name__
    )


def truth(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, int | float | str | list | dict | tuple):
        return bool(v)
    return True


def dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def to_string(v: Any) -> str:
    """Go's %v for the values templates see; maps and lists of maps print as JSON, as
    Ollama's Tools and tool-call Arguments do."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    if isinstance(v, dict):
        return dumps(v)
    if isinstance(v, list | tuple):
        if any(isinstance(x, dict | list) for x in v):
            return dumps(v)
        return "[" + " ".join(to_string(x) for x in v) + "]"
    return str(v)


def _cmp_ok(a: Any, b: Any) -> bool:
    num = (int, float)
    return (isinstance(a, num) and isinstance(b, num)) or type(a) is type(b) or a is None or b is None


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise TemplateError("missing argument for comparison")
    for b in bs:
        if not _cmp_ok(a, b):
            raise TemplateError("incompatible types for comparison")
        if a == b:
            return True
    return False


def _order(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def f(a: Any, b: Any) -> bool:
        if not _cmp_ok(a, b) or isinstance(a, dict | list) or a is None:
            raise TemplateError("incompatible types for comparison")
        return op(a, b)

    return f


def _len(v: Any) -> int:
    if isinstance(v, str | list | dict | tuple):
        return len(v)
    raise TemplateError(f"len of type {_type(v)}")


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        elif isinstance(v, list | str) and isinstance(k, int) and not isinstance(k, bool):
            if not 0 <= k < len(v):
                raise TemplateError(f"index out of range: {k}")
            v = v[k]
        else:
            raise TemplateError(f"can't index item of type {_type(v)}")
    return v


def _slice(v: Any, *idx: Any) -> Any:
    if not isinstance(v, list | str):
        raise TemplateError(f"can't slice item of type {_type(v)}")
    if len(idx) > 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise TemplateError("invalid slice index")
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(v)
    if not 0 <= lo <= hi <= len(v):
        raise TemplateError(f"slice index out of range: {lo}:{hi}")
    return v[lo:hi]


def _printf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        try:
            arg = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb == "q":
            return json.dumps(to_string(arg), ensure_ascii=False)
        if verb == "d" and isinstance(arg, int | float):
            return str(int(arg))
        return to_string(arg)

    return re.sub(r"%[-+# 0]*\d*(?:\.\d+)?([a-zA-Z%])", sub, fmt)


def _ts_type(v: Any) -> str:
    """Ollama's toTypeScriptType for a JSON-schema property (a loose rendition)."""
    t = lookup(v, "type") if isinstance(v, dict) else v
    types = t if isinstance(t, list) else [t]
    names = {"integer": "number", "array": "any[]", "object": "Record<string, any>", None: "any"}
    return " | ".join(names.get(x, str(x)) for x in types)


FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda a: not truth(a),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _order(lambda a, b: a < b),
    "le": _order(lambda a, b: a <= b),
    "gt": _order(lambda a, b: a > b),
    "ge": _order(lambda a, b: a >= b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": lambda *a: "".join(to_string(x) for x in a),
    "println": lambda *a: " ".join(to_string(x) for x in a) + "\n",
    "printf": _printf,
    "json": dumps,
    "html": lambda s: to_string(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
    "urlquery": lambda s: to_string(s),
    "js": lambda s: json.dumps(to_string(s))[1:-1],
    "currentDate": lambda: date.today().isoformat(),
    "yesterdayDate": lambda: (date.today() - timedelta(days=1)).isoformat(),
    "toTypeScriptType": _ts_type,
}


class _Exec:
    def __init__(self, data: Any) -> None:
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS or (self.steps & 1023 == 0 and time.monotonic() > self.deadline):
            raise TemplateError("template execution exceeded its time limit")

    def write(self, s: str) -> None:
        self.size += len(s)
        if self.size > MAX_OUTPUT_CHARS:
            raise TemplateError("rendered prompt is too large")
        self.out.append(s)

    # variables ----------------------------------------------------------------

    def var(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f'undefined variable "{name}"')

    def set_var(self, name: str, value: Any, declare: bool) -> None:
        if declare:
            self.scopes[-1][name] = value
            return
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError(f'undefined variable "{name}"')

    # evaluation ---------------------------------------------------------------

    def pipe(self, p: Pipe, dot: Any, declare_result: bool = True) -> Any:
        value: Any = _NOVALUE
        for cmd in p.cmds:
            value = self.command(cmd.args, dot, value)
        if p.decl and declare_result:
            self.set_var(p.decl[0], value, not p.assign)
        return value

    def command(self, args: list[Any], dot: Any, piped: Any) -> Any:
        self.tick()
        head = args[0]
        if isinstance(head, Ident):
            fn = head.name
            if fn in ("and", "or"):
                return self.logic(fn, args[1:], dot, piped)
            if fn not in FUNCS:
                raise TemplateError(f'function "{fn}" not defined')
            vals = [self.arg(a, dot) for a in args[1:]]
            if piped is not _NOVALUE:
                vals.append(piped)
            try:
                return FUNCS[fn](*vals)
            except TypeError as exc:
                raise TemplateError(f"wrong number of args for {fn}") from exc
        if len(args) > 1 or piped is not _NOVALUE:
            raise TemplateError("can't give argument to non-function")
        return self.arg(head, dot)

    def logic(self, fn: str, args: list[Any], dot: Any, piped: Any) -> Any:
        # short-circuit like Go 1.18+: later arguments are not evaluated
        items: list[Any] = [*args, Literal(piped)] if piped is not _NOVALUE else list(args)
        if not items:
            raise TemplateError(f"wrong number of args for {fn}")
        value: Any = None
        for a in items:
            value = self.arg(a, dot)
            if truth(value) == (fn == "or"):
                return value
        return value

    def arg(self, a: Any, dot: Any) -> Any:
        if isinstance(a, Literal):
            return a.value
        if isinstance(a, Dot):
            return dot
        if isinstance(a, Field):
            if a.pipe is not None:
                base = self.pipe(a.pipe, dot, declare_result=False)
            elif a.var is not None:
                base = self.var(a.var)
            else:
                base = dot
            for name in a.names:
                base = lookup(base, name)
            return base
        if isinstance(a, Ident):
            if a.name in ("and", "or"):
                raise TemplateError(f"wrong number of args for {a.name}")
            if a.name not in FUNCS:
                raise TemplateError(f'function "{a.name}" not defined')
            return FUNCS[a.name]()
        raise TemplateError("bad argument")

    # statements ---------------------------------------------------------------

    def run(self, nodes: list[Node], dot: Any) -> None:
        for n in nodes:
            self.tick()
            if isinstance(n, Text):
                self.write(n.text)
            elif isinstance(n, Action):
                v = self.pipe(n.pipe, dot)
                if not n.pipe.decl:
                    self.write(to_string(v))
            elif isinstance(n, Branch):
                self.branch(n, dot)
            elif isinstance(n, Control):
                raise _Break() if n.kind == "break" else _Continue()

    def scoped(self, nodes: list[Node], dot: Any, bind: dict[str, Any] | None = None) -> None:
        self.scopes.append(dict(bind or {}))
        try:
            self.run(nodes, dot)
        finally:
            self.scopes.pop()

    def branch(self, n: Branch, dot: Any) -> None:
        self.scopes.append({})
        try:
            value = self.pipe(n.pipe, dot, declare_result=n.kind != "range")
            if n.kind == "range":
                self.range(n, value, dot)
            elif truth(value):
                self.scoped(n.body, value if n.kind == "with" else dot)
            elif n.else_body is not None:
                self.scoped(n.else_body, dot)
        finally:
            self.scopes.pop()

    def range(self, n: Branch, value: Any, dot: Any) -> None:
        items: Iterator[tuple[Any, Any]]
        if isinstance(value, dict):
            items = iter(list(value.items()))
        elif isinstance(value, list | tuple | str):
            items = iter(enumerate(list(value)))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = ((i, i) for i in range(value))
        elif value is None:
            items = iter(())
        else:
            raise TemplateError(f"range can't iterate over {to_string(value)}")
        ran = False
        for key, elem in items:
            self.tick()
            ran = True
            bind: dict[str, Any] = {}
            if len(n.pipe.decl) == 2:
                bind = {n.pipe.decl[0]: key, n.pipe.decl[1]: elem}
            elif n.pipe.decl:
                bind = {n.pipe.decl[0]: elem}
            try:
                self.scoped(n.body, elem, bind)
            except _Break:
                break
            except _Continue:
                continue
        if not ran and n.else_body is not None:
            self.scoped(n.else_body, dot)


class _NoValue:
    pass


_NOVALUE: Any = _NoValue()


class Template:
    """A parsed template. Parsing validates everything static (unknown actions,
    unexported field names) before any execution."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tree: Tree = parse(source)

    @property
    def vars(self) -> set[str]:
        return self.tree.fields

    def execute(self, data: Any, nodes: list[Node] | None = None) -> str:
        ex = _Exec(data)
        try:
            ex.run(self.tree.nodes if nodes is None else nodes, data)
        except (_Break, _Continue) as exc:
            raise TemplateError("break or continue outside range") from exc
        except RecursionError as exc:
            raise TemplateError("template nested too deeply") from exc
        return "".join(ex.out)
