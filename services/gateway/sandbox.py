"""Jinja's immutable sandbox, bounded in what one expression may allocate.

A GGUF's chat template is code from whoever published the model. The stock sandbox stops
attribute tricks but not `"a" * 10**9`, `9 ** 10**7`, `"%0999999999d" % 1`,
`"x".ljust(10**9)` or a string doubled in a loop: each is one step that allocates
gigabytes before any output cap or time check can run. Here every such step is checked
before it runs (repeat counts, exponents, format widths, padding widths, `replace` and
`join` results) and every result after (no string or list over MAX_CHARS), so a hostile
template fails fast with a SecurityError instead of taking the gateway's memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_CHARS = 4 * 1024 * 1024  # the longest string or list one step may make (the prompt cap)
MAX_POW_BITS = 1 << 16  # integers beyond this many bits are no prompt's business

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would exceed the template's size limit")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def bounded(value: Any) -> Any:
    if _size(value) > MAX_CHARS:
        raise _refuse("a value")
    return value


def check_format(fmt: str) -> None:
    """Widths and precisions in a %-format or str.format string."""
    for width, precision in _PERCENT.findall(fmt):
        for n in (width, precision):
            if n == "*" or (n and int(n) > MAX_CHARS):
                raise _refuse("a format width")
    for spec in _BRACE_SPEC.findall(fmt):
        if "{" in spec or any(int(n) > MAX_CHARS for n in re.findall(r"\d+", spec)):
            raise _refuse("a format width")


def _check_repeat(seq: Any, times: Any) -> None:
    if _size(seq) and isinstance(times, int) and _size(seq) * max(times, 0) > MAX_CHARS:
        raise _refuse("a repetition")


def _check_pow(base: Any, exp: Any) -> None:
    ints = isinstance(base, int) and isinstance(exp, int)
    if ints and abs(base) > 1 and exp > 0 and abs(base).bit_length() * exp > MAX_POW_BITS:
        raise _refuse("a power")


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = s.count(old) if old else len(s) + 1
        if len(s) + hits * (len(new) - len(old)) > MAX_CHARS:
            raise _refuse("a replace")


def _check_join(items: Any, sep: Any = "") -> None:
    if isinstance(items, list | tuple):
        total = sum(_size(x) if isinstance(x, str) else 16 for x in items)
        if total + len(items) * _size(sep) > MAX_CHARS:
            raise _refuse("a join")


def _check_method(obj: Any, args: Sequence[Any]) -> None:
    """Calls of str methods that can grow a string past the cap in one step."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _PADDING and any(isinstance(a, int) and a > MAX_CHARS for a in args):
        raise _refuse(f"str.{name}")
    if name in ("format", "format_map"):
        check_format(owner)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1])
    elif name == "join" and args:
        _check_join(args[0], owner)
    elif name == "expandtabs" and owner.count("\t") * (args[0] if args and isinstance(args[0], int) else 8) > MAX_CHARS:
        raise _refuse("str.expandtabs")


def _strs(args: Sequence[Any]) -> list[Any]:
    # Filters marked pass_context / pass_eval_context get that object first.
    return [a for a in args if not isinstance(a, Context) and type(a).__name__ != "EvalContext"]


def _filter_check(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    a = _strs(args)
    if name == "center" and len(a) > 1 and isinstance(a[1], int) and a[1] > MAX_CHARS:
        raise _refuse("center")
    elif name == "indent" and a:
        width = a[1] if len(a) > 1 else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else _size(width)
        if pad * (str(a[0]).count("\n") + 1) > MAX_CHARS:
            raise _refuse("indent")
    elif name == "format" and a and isinstance(a[0], str):
        check_format(a[0])
    elif name == "replace" and len(a) >= 3:
        _check_replace(str(a[0]), a[1], a[2])
    elif name == "join" and a:
        _check_join(a[0], a[1] if len(a) > 1 else kwargs.get("d", ""))
    elif name == "wordwrap" and len(a) > 1 and isinstance(a[1], int) and a[1] > MAX_CHARS:
        raise _refuse("wordwrap")


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja_pass_arg (pass_context and friends)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _filter_check(name, args, kwargs)
        return bounded(f(*args, **kwargs))

    return checked


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b`: the same join, but its result is checked like any other step's.
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # lipsum(n=10**9): no use in a chat template

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Any:
        # The stock sandbox returns an undefined value; refuse loudly instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def bounded_concat(self, parts: Sequence[Any]) -> str:
        if sum(_size(p) for p in parts if isinstance(p, str)) > MAX_CHARS:
            raise _refuse("a concatenation")
        return bounded("".join(map(str, parts)))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "%" and isinstance(left, str):
            check_format(left)
        return bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_method(__obj, args)
        return bounded(super().call(__context, __obj, *args, **kwargs))
