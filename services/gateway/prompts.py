"""Prompt rendering. Precedence: the Go TEMPLATE (request override or the model's
TEMPLATE layer), else the GGUF Jinja chat template, else a plain fallback.

Templates are untrusted input (they arrive inside model files): Go templates run in
our bounded interpreter (templates/), Jinja in the immutable sandbox bounded per step
(sandbox.py) with a line-level deadline, an output cap, and unsafe attribute access turned
into an error.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.v1 import registry_pb2
from services.gateway.errors import HTTPError
from services.gateway.sandbox import BoundedSandbox
from services.gateway.templates import TemplateError
from services.gateway.templates import ollama as gotmpl
from services.gateway.thinking import DEFAULT_TAGS
from services.gateway.toolchoice import ToolFormat

MAX_RENDERED_CHARS = 4 * 1024 * 1024
MAX_RENDER_SECONDS = 2.0


@dataclass(frozen=True)
class Prompt:
    text: str
    add_bos: bool
    kind: str = "plain"  # go | jinja | plain | raw


@dataclass(frozen=True)
class Think:
    """The request's `think`: on/off, a level, and whether it was given at all."""

    enabled: bool = False
    level: str = ""
    is_set: bool = False


def template_error(exc: Exception) -> HTTPError:
    return HTTPError(400, f"template error: {exc}", "template_error")


# --- Jinja ------------------------------------------------------------------


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _env() -> ImmutableSandboxedEnvironment:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_ENV = _env()


class _Deadline:
    """A trace hook on the compiled template's own frames: loops over data make no
    calls the sandbox could intercept, so time is checked per executed line."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.lines = 0

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == "<template>":
            return self.local_trace
        return None

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.lines += 1
        if self.lines & 255 == 0 and time.monotonic() > self.until:
            raise jinja2.TemplateError("template rendering exceeded its time limit")
        return self.local_trace


def render_jinja(template: str, context: dict[str, Any]) -> str:
    deadline = _Deadline(MAX_RENDER_SECONDS)
    previous = sys.gettrace()
    try:
        compiled = _ENV.from_string(template)
        out: list[str] = []
        size = 0
        sys.settrace(deadline.global_trace)
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise HTTPError(400, "template error: rendered prompt is too large", "template_error")
            out.append(piece)
    except HTTPError:
        raise
    except Exception as exc:  # whatever the model's template code raises (1/0, int("x"), ...)
        raise template_error(exc) from exc
    finally:
        sys.settrace(previous)
    return "".join(out)


def _jinja_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        j = {k: v for k, v in m.items() if v not in (None, "", [])}
        j.setdefault("content", "")
        if m.get("tool_name"):
            j["name"] = m["tool_name"]
        if m.get("tool_calls"):
            j["tool_calls"] = [{"type": "function", **tc} for tc in m["tool_calls"]]
        out.append(j)
    return out


# --- rendering --------------------------------------------------------------


def _bos(model: registry_pb2.Model, text: str) -> bool:
    return model.add_bos_token and not (model.bos_token and text.startswith(model.bos_token))


def _plain(messages: list[dict[str, Any]]) -> str:
    """A role-prefixed transcript ending with the assistant cue, for models without a template."""
    lines = [f"{(m.get('role') or 'user').capitalize()}: {m.get('content') or ''}" for m in messages]
    last_open = messages and messages[-1].get("role") == "assistant"
    if last_open:
        return "\n\n".join(lines)
    return "\n\n".join([*lines, "Assistant:"])


def with_system(model: registry_pb2.Model, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model's SYSTEM goes first unless the request brings its own system message."""
    if model.system and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": model.system}, *messages]
    return messages


def render_chat(
    model: registry_pb2.Model,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    think: Think | None = None,
    template: str | None = None,
) -> Prompt:
    think = think or Think()
    go = template or model.template
    try:
        if go:
            text = gotmpl.render(go, messages, tools, think.enabled, think.level, think.is_set)
            return Prompt(text, _bos(model, text), "go")
    except TemplateError as exc:
        raise template_error(exc) from exc
    if model.gguf_chat_template:
        context: dict[str, Any] = {
            "messages": _jinja_messages(messages),
            "add_generation_prompt": not (messages and messages[-1].get("role") == "assistant"),
            "bos_token": model.bos_token,
            "eos_token": model.eos_token,
        }
        if tools:
            context["tools"] = tools
        if think.is_set:
            context["enable_thinking"] = think.enabled
            if think.level:
                context["reasoning_effort"] = think.level
        text = render_jinja(model.gguf_chat_template, context)
        return Prompt(text, _bos(model, text), "jinja")
    text = _plain(messages)
    return Prompt(text, _bos(model, text), "plain")


def with_prefix(model: registry_pb2.Model, prefix: str, prompt: Prompt) -> Prompt:
    """`prefix` written before a rendered prompt (generate's deprecated `context`)."""
    text = prefix + prompt.text
    return Prompt(text, _bos(model, text), prompt.kind)


def render_generate(
    model: registry_pb2.Model,
    prompt: str,
    system: str | None,
    raw: bool,
    template: str | None = None,
    suffix: str = "",
    think: Think | None = None,
) -> Prompt:
    if raw:
        return Prompt(prompt, model.add_bos_token, "raw")
    go = template or model.template
    if suffix and go:
        try:
            text = gotmpl.render_fim(go, prompt, suffix)
        except TemplateError as exc:
            raise template_error(exc) from exc
        return Prompt(text, _bos(model, text), "go")
    if not go and not model.gguf_chat_template:
        return Prompt(prompt, model.add_bos_token, "plain")  # Ollama's default template is {{ .Prompt }}
    messages: list[dict[str, Any]] = []
    sys_text = model.system if system is None else system
    if sys_text:
        messages.append({"role": "system", "content": sys_text})
    messages.append({"role": "user", "content": prompt})
    return render_chat(model, messages, None, think, template)


def tool_tag(model: registry_pb2.Model, template: str | None = None) -> str:
    go = template or model.template
    if go:
        try:
            return gotmpl.tool_tag(go)
        except TemplateError:
            return "{"
    return "<tool_call>" if "<tool_call>" in model.gguf_chat_template else "{"


def tool_format(model: registry_pb2.Model, template: str | None = None) -> ToolFormat:
    """How the template writes a call: its opening tag, the matching close tag when the
    template has one (`<tool_call>` … `</tool_call>`), and the arguments key."""
    source = template or model.template or model.gguf_chat_template
    tag = tool_tag(model, template)
    close = ""
    if tag.startswith("<") and tag.endswith(">") and (end := "</" + tag[1:]) in source:
        close = end
    key = "parameters" if '"parameters"' in source and '"arguments"' not in source else "arguments"
    return ToolFormat(tag, close, key)


def thinking_tags(model: registry_pb2.Model, template: str | None = None) -> tuple[str, str]:
    go = template or model.template
    if go:
        try:
            return gotmpl.thinking_tags(go) or DEFAULT_TAGS
        except TemplateError:
            return DEFAULT_TAGS
    return DEFAULT_TAGS
