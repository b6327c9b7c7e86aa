"""Lexer and parser for the text/template subset Ollama's library templates use.

The tree mirrors Go's parse package closely enough for Ollama's tree surgery
(legacy `.Response` cutting, tool-call tag discovery). Nothing here evaluates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_TEMPLATE_CHARS = 256 * 1024
MAX_DEPTH = 64


class TemplateError(Exception):
    pass


# --- tree -------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Field:
    """`.A.B` (base is dot), `$x.A` (base a variable) or `(pipe).A`."""

    names: list[str]
    var: str | None = None
    pipe: Pipe | None = None


@dataclass
class Literal:
    value: Any


@dataclass
class Ident:
    name: str


@dataclass
class Dot:
    pass


Arg = Field | Literal | Ident | Dot


@dataclass
class Command:
    args: list[Arg]


@dataclass
class Pipe:
    decl: list[str]
    assign: bool
    cmds: list[Command]


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    kind: str  # if | range | with
    pipe: Pipe
    body: list[Node]
    else_body: list[Node] | None = None


@dataclass
class Control:
    kind: str  # break | continue


Node = Text | Action | Branch | Control


@dataclass
class Tree:
    nodes: list[Node]
    fields: set[str] = field(default_factory=set)  # lower-cased top-level names, as Go's Vars()


# --- lexer ------------------------------------------------------------------

_WS = " \t\r\n"
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))
  | (?P<declare>:=)
  | (?P<punct>[()|,=])
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>(?:\.[A-Za-z0-9_]+)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


@dataclass
class Tok:
    kind: str
    value: str
    pos: int


def _lex_action(src: str, start: int) -> tuple[list[Tok], int, bool]:
    """Tokens of one action from `start` (just after `{{` and any trim marker) to its `}}`.
    Returns tokens, the index after `}}`, and whether the action trims to the right."""
    toks: list[Tok] = []
    i = start
    while True:
        if src.startswith(" -}}", i) or src.startswith("\t-}}", i) or src.startswith("\n-}}", i):
            return toks, i + 4, True
        if src.startswith("}}", i):
            return toks, i + 2, False
        if i >= len(src):
            raise TemplateError("unclosed action")
        m = _TOKEN.match(src, i)
        if not m:
            raise TemplateError(f"unexpected {src[i]!r} in action")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(Tok(kind, m.group(), i))
        i = m.end()


def _unquote(tok: Tok) -> str:
    if tok.kind == "raw":
        return tok.value[1:-1]
    try:
        return str(json.loads(tok.value))
    except json.JSONDecodeError:
        try:
            return tok.value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"bad string {tok.value}") from exc


def _number(text: str) -> int | float:
    t = text.replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        return float(t)


def _check_name(name: str) -> None:
    # Go can only reach exported fields; refusing underscores keeps `__class__` & co out.
    if not name or name.startswith("_"):
        raise TemplateError(f"can't evaluate field {name}")


# --- parser -----------------------------------------------------------------


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.fields: set[str] = set()
        self.items = self._split()
        self.pos = 0
        self._else_toks: list[Tok] = []

    def _split(self) -> list[tuple[str, Any]]:
        """Text and action items with Go's `{{-`/`-}}` trimming applied."""
        src = self.src
        items: list[tuple[str, Any]] = []
        i = 0
        trim_next = False
        while i < len(src):
            j = src.find("{{", i)
            text = src[i:] if j < 0 else src[i:j]
            if trim_next:
                text = text.lstrip(_WS)
            if j < 0:
                if text:
                    items.append(("text", text))
                break
            k = j + 2
            trim_left = src.startswith("-", k) and k + 1 < len(src) and src[k + 1] in _WS
            if trim_left:
                text = text.rstrip(_WS)
                k += 2
            if text:
                items.append(("text", text))
            rest = src[k:].lstrip(_WS)
            if rest.startswith("/*"):
                end = src.find("*/", k)
                if end < 0:
                    raise TemplateError("unclosed comment")
                after = end + 2
                stripped = src[after:].lstrip(_WS)
                right = stripped.startswith("-}}")
                close = src.find("}}", after)
                if close < 0:
                    raise TemplateError("unclosed comment")
                i, trim_next = close + 2, right
                continue
            toks, i, trim_next = _lex_action(src, k)
            items.append(("action", toks))
        return items

    # keywords ---------------------------------------------------------------

    def parse(self) -> Tree:
        nodes, end = self._list(0)
        if end is not None:
            raise TemplateError(f"unexpected {{{{{end}}}}}")
        return Tree(nodes, self.fields)

    def _list(self, depth: int) -> tuple[list[Node], str | None]:
        """Nodes until `end`/`else`; returns the terminator ('end', 'else', 'else if ...') or None at EOF."""
        if depth > MAX_DEPTH:
            raise TemplateError("template nested too deeply")
        nodes: list[Node] = []
        while self.pos < len(self.items):
            kind, value = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(Text(value))
                continue
            toks: list[Tok] = value
            if not toks:
                raise TemplateError("missing value for command")
            head = toks[0].value if toks[0].kind == "ident" else ""
            if head == "end":
                return nodes, "end"
            if head == "else":
                self._else_toks = toks[1:]
                return nodes, "else"
            if head in ("if", "range", "with"):
                nodes.append(self._branch(head, toks, depth))
            elif head in ("break", "continue"):
                nodes.append(Control(head))
            elif head in ("define", "template", "block"):
                raise TemplateError(f"{{{{{head}}}}} is not supported")
            else:
                nodes.append(Action(self._pipe(toks, decl_ok=True)))
        return nodes, None

    def _branch(self, kind: str, toks: list[Tok], depth: int) -> Branch:
        pipe = self._pipe(toks[1:], decl_ok=True, range_decl=kind == "range")
        body, term = self._list(depth + 1)
        node = Branch(kind, pipe, body)
        if term == "else":
            else_toks = self._else_toks
            if else_toks and else_toks[0].kind == "ident" and else_toks[0].value in ("if", "with"):
                # `else if x` is an `if` nested in the else branch that shares this `end`
                node.else_body = [self._branch(else_toks[0].value, else_toks, depth + 1)]
                return node
            node.else_body, term = self._list(depth + 1)
        if term != "end":
            raise TemplateError(f"unexpected EOF in {kind}")
        return node

    # pipelines --------------------------------------------------------------

    def _pipe(self, toks: list[Tok], decl_ok: bool = False, range_decl: bool = False) -> Pipe:
        decl: list[str] = []
        assign = False
        ops = [i for i, t in enumerate(toks) if t.kind == "declare" or (t.kind == "punct" and t.value == "=")]
        if ops and decl_ok:
            op = ops[0]
            names = [t for t in toks[:op] if not (t.kind == "punct" and t.value == ",")]
            if names and all(t.kind == "var" and "." not in t.value for t in names):
                if len(names) > (2 if range_decl else 1):
                    raise TemplateError("too many declarations")
                decl = [t.value for t in names]
                assign = toks[op].kind == "punct"
                toks = toks[op + 1 :]
        cmds = [Command(self._args(part)) for part in _split_pipes(toks)]
        if not cmds or any(not c.args for c in cmds):
            raise TemplateError("missing value for command")
        return Pipe(decl, assign, cmds)

    def _args(self, toks: list[Tok]) -> list[Arg]:
        args: list[Arg] = []
        i = 0
        while i < len(toks):
            t = toks[i]
            i += 1
            if t.kind == "punct" and t.value == "(":
                depth, j = 1, i
                while j < len(toks) and depth:
                    if toks[j].kind == "punct" and toks[j].value in "()":
                        depth += 1 if toks[j].value == "(" else -1
                    j += 1
                if depth:
                    raise TemplateError("unclosed left paren")
                inner = self._pipe(toks[i : j - 1])
                i = j
                names: list[str] = []
                # `(x).Field`: the field is glued to the paren
                if i < len(toks) and toks[i].kind == "field" and toks[i].pos == toks[j - 1].pos + 1:
                    names = self._field_names(toks[i].value)
                    i += 1
                args.append(Field(names, pipe=inner))
            elif t.kind == "field":
                names = self._field_names(t.value)
                self.fields.add(names[0].lower())
                args.append(Field(names))
            elif t.kind == "var":
                name, _, rest = t.value.partition(".")
                names = self._field_names("." + rest) if rest else []
                if name == "$" and names:
                    self.fields.add(names[0].lower())
                args.append(Field(names, var=name))
            elif t.kind == "dot":
                args.append(Dot())
            elif t.kind in ("str", "raw"):
                args.append(Literal(_unquote(t)))
            elif t.kind == "char":
                args.append(Literal(ord(_unquote(Tok("str", '"' + t.value[1:-1] + '"', t.pos)))))
            elif t.kind == "num":
                args.append(Literal(_number(t.value)))
            elif t.kind == "ident":
                if t.value in ("true", "false"):
                    args.append(Literal(t.value == "true"))
                elif t.value == "nil":
                    args.append(Literal(None))
                else:
                    args.append(Ident(t.value))
            else:
                raise TemplateError(f"unexpected {t.value!r} in command")
        return args

    @staticmethod
    def _field_names(text: str) -> list[str]:
        names = text.split(".")[1:]
        for n in names:
            _check_name(n)
        return names


def _split_pipes(toks: list[Tok]) -> list[list[Tok]]:
    parts: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.value == "(":
            depth += 1
        elif t.kind == "punct" and t.value == ")":
            depth -= 1
        if t.kind == "punct" and t.value == "|" and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def parse(src: str) -> Tree:
    if len(src) > MAX_TEMPLATE_CHARS:
        raise TemplateError("template is too large")
    return _Parser(src).parse()
