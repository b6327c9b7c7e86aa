"""Modelfile parsing and printing (Ollama's parser/parser.go, with single quotes added).

`parse_modelfile` turns the text into commands; `to_spec` checks them (types
of PARAMETERs, MESSAGE roles, one FROM) and groups them for CreateModel. It is
plain Python with no I/O, so the CLI uses it to find the files it must upload
and the registry uses it for the `modelfile` field of a create request.
Errors are INVALID_ARGUMENT with Ollama's texts, prefixed by `(line N): `.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.errors import CorralError
from corral.options import PARAMETERS
from corral.v1 import common_pb2

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message",
            "requires")  # fmt: skip
_COMMAND_ERROR = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", "renderer", '
    '"parser", "parameter", "message", or "requires"'
)
ROLES = ("system", "user", "assistant")
_ROLE_ERROR = 'message role must be one of "system", "user", or "assistant"'

DEPRECATED = {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
              "mirostat_tau", "mirostat_eta", "tfs_z", "numa"}  # fmt: skip
MAX_MODELFILE_BYTES = 16 << 20


def modelfile_error(line: int, message: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f"(line {line}): {message}")


@dataclass(frozen=True)
class Command:
    name: str  # lower-case keyword, or the parameter name for PARAMETER
    args: str
    line: int
    role: str = ""  # MESSAGE only


_NAME_RE = re.compile(r"[A-Za-z]+")
_PARAM_RE = re.compile(r"[A-Za-z0-9_]+")


def _clean(text: str) -> str:
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    # Non-printable runes are dropped, as Ollama does; newlines and tabs are layout.
    return "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())


def _value(text: str, pos: int, line: int) -> tuple[str, int, int]:
    """Read a value starting at `pos`: (value, new pos, new line)."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    for quote in ('"""', "'''", '"', "'"):
        if text.startswith(quote, pos):
            end = text.find(quote, pos + len(quote))
            if end < 0 and quote.startswith("'"):
                break  # Ollama keeps a lone single quote literally; so do we
            if end < 0:
                raise modelfile_error(line, "unexpected EOF")
            value = text[pos + len(quote) : end]
            pos = end + len(quote)
            rest_end = text.find("\n", pos)
            rest_end = len(text) if rest_end < 0 else rest_end
            if text[pos:rest_end].strip():
                raise modelfile_error(line + value.count("\n"), "unexpected text after closing quote")
            return value, rest_end, line + value.count("\n")
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    return text[pos:end].strip(), end, line


def _word(text: str, pos: int, pattern: re.Pattern[str]) -> tuple[str, int]:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    m = pattern.match(text, pos)
    return (m.group(0), m.end()) if m else ("", pos)


def parse_modelfile(text: str) -> list[Command]:
    """The commands of a Modelfile, in order; raises INVALID_ARGUMENT with a line number."""
    if len(text) > MAX_MODELFILE_BYTES:
        raise modelfile_error(1, "modelfile is too large")
    text = _clean(text)
    commands: list[Command] = []
    pos, line = 0, 1
    while pos < len(text):
        if text[pos] == "\n":
            pos, line = pos + 1, line + 1
            continue
        if text[pos] in " \t":
            pos += 1
            continue
        if text[pos] == "#":  # a comment only where an instruction could start
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        start_line = line
        name, pos = _word(text, pos, _NAME_RE)
        if not name or name.lower() not in COMMANDS:
            raise modelfile_error(line, _COMMAND_ERROR)
        keyword = name.lower()
        role = ""
        if keyword == "parameter":
            keyword, pos = _word(text, pos, _PARAM_RE)
            if not keyword:
                raise modelfile_error(line, "missing parameter name")
        elif keyword == "message":
            role, pos = _word(text, pos, _NAME_RE)
            if role not in ROLES:
                raise modelfile_error(line, _ROLE_ERROR)
        value, pos, line = _value(text, pos, line)
        if not value and keyword not in ("template", "system", "message"):
            raise modelfile_error(start_line, f"missing value for {name.upper()}")
        commands.append(Command(keyword, value, start_line, role))
    return commands


@dataclass
class ModelfileSpec:
    """A parsed Modelfile grouped the way CreateModel takes it."""

    from_: str = ""
    adapters: list[str] = field(default_factory=list)
    draft: str = ""  # DRAFT: a smaller model of the same vocabulary for speculative decoding
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    requires: str = ""
    warnings: list[str] = field(default_factory=list)


def check_requires(version: str, line: int = 0) -> str:
    """A REQUIRES (or API `requires`) version as stored: semver without a leading `v`."""
    if not re.fullmatch(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?", version):
        message = "requires must be a valid semver (e.g. 0.14.0)"
        raise modelfile_error(line, message) if line else CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, message)
    return version.removeprefix("v")


def typed_parameter(name: str, value: str, line: int = 0) -> Any:
    """A PARAMETER value converted to its api.Options type (Ollama's error texts)."""
    where = (lambda m: modelfile_error(line, m)) if line else (
        lambda m: CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, m))  # fmt: skip
    kind = PARAMETERS.get(name)
    if kind == "list":
        return value
    try:
        if kind == "int":
            return int(float(value)) if re.fullmatch(r"[+-]?\d+(\.0*)?", value) else int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise where(f"invalid {kind} value [{value}]") from None
    if kind == "bool":
        if value.lower() in ("1", "t", "true"):
            return True
        if value.lower() in ("0", "f", "false"):
            return False
        raise where(f"invalid bool value [{value}]")
    raise where(f"unknown parameter '{name}'")


def to_spec(commands: list[Command]) -> ModelfileSpec:
    spec = ModelfileSpec()
    from_line = 0
    for c in commands:
        if c.name == "from":
            if from_line:
                raise modelfile_error(c.line, "only one FROM line is supported")
            spec.from_, from_line = c.args, c.line
        elif c.name == "adapter":
            spec.adapters.append(c.args)
        elif c.name == "draft":
            if spec.draft:
                raise modelfile_error(c.line, "only one DRAFT line is supported")
            spec.draft = c.args
        elif c.name == "template":
            spec.template = c.args
        elif c.name == "system":
            spec.system = c.args
        elif c.name == "license":
            spec.license.append(c.args)
        elif c.name == "message":
            spec.messages.append((c.role, c.args))
        elif c.name == "requires":
            spec.requires = check_requires(c.args, c.line)
        elif c.name in ("renderer", "parser"):
            spec.warnings.append(f"{c.name.upper()} is not supported yet and was ignored")
        elif c.name in DEPRECATED:
            spec.warnings.append(f"parameter {c.name} is deprecated")
        else:
            value = typed_parameter(c.name, c.args, c.line)
            if PARAMETERS.get(c.name) == "list":
                spec.parameters.setdefault(c.name, []).append(value)
            else:
                spec.parameters[c.name] = value
    if not from_line:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "no FROM line")
    return spec


def parse_spec(text: str) -> ModelfileSpec:
    return to_spec(parse_modelfile(text))


# Printing (ollama show --modelfile)


def quote(s: str) -> str:
    # Ollama quotes only around newlines and spaces; a value starting with a quote or
    # with other outer whitespace (a tab, U+00A0) would then not parse back as itself.
    if "\n" in s or s != s.strip() or s.startswith(('"', "'")):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def go_value(v: Any) -> str:
    """Go's %#v of a JSON-decoded value (strings quoted, whole floats without a point)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return go_quote(v)
    return go_quote(str(v))


def go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_parameters(params: dict[str, Any]) -> str:
    """Ollama's /api/show `parameters`: `%-30s %#v` per value, one line per list item."""
    lines: list[str] = []
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        lines.extend(f"{key:<30} {go_value(v)}" for v in values)
    return "\n".join(lines)


def format_modelfile(
    short_name: str,
    weights: list[str],
    adapters: list[str],
    template: str,
    system: str,
    params: dict[str, Any],
    licenses: list[str],
    messages: list[tuple[str, str]],
    draft: str = "",
) -> str:
    lines = [f"FROM {path}" for path in weights]
    lines += [f"ADAPTER {path}" for path in adapters]
    lines += [f"DRAFT {draft}"] if draft else []
    if template:
        lines.append(f"TEMPLATE {quote(template)}")
    if system:
        lines.append(f"SYSTEM {quote(system)}")
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        lines.extend(f"PARAMETER {key} {quote(_plain(v))}" for v in values)
    lines += [f"LICENSE {quote(text)}" for text in licenses]
    lines += [f"MESSAGE {role} {quote(content)}" for role, content in messages]
    header = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {short_name}\n\n"
    )
    return header + "\n".join(lines) + "\n"


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
