"""Prompt rendering: the model's GGUF Jinja chat template in a sandbox, or the raw prompt.

Templates are untrusted input (they arrive inside model files): they run in
Jinja's immutable sandbox with a cap on output size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.v1 import registry_pb2
from services.gateway.errors import HTTPError

MAX_RENDERED_CHARS = 4 * 1024 * 1024


@dataclass(frozen=True)
class Prompt:
    text: str
    add_bos: bool


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_ENV = _env()


def render_jinja(template: str, context: dict[str, Any]) -> str:
    try:
        compiled = _ENV.from_string(template)
        out: list[str] = []
        size = 0
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise HTTPError(400, "template error: rendered prompt is too large", "template_error")
            out.append(piece)
    except jinja2.TemplateError as exc:
        raise HTTPError(400, f"template error: {exc}", "template_error") from exc
    return "".join(out)


def render_messages(model: registry_pb2.Model, messages: list[dict[str, Any]]) -> Prompt:
    """A chat in the model's format, ending where the assistant's reply starts."""
    if model.gguf_chat_template:
        text = render_jinja(
            model.gguf_chat_template,
            {
                "messages": messages,
                "add_generation_prompt": True,
                "bos_token": model.bos_token,
                "eos_token": model.eos_token,
            },
        )
        # The template writes BOS itself when the model wants one.
        return Prompt(text, add_bos=not model.bos_token or model.bos_token not in text[: len(model.bos_token) + 8])
    # A base model without a template: the plain conversation text.
    text = "\n\n".join(m.get("content", "") for m in messages if m.get("content"))
    return Prompt(text, add_bos=model.add_bos_token)


def render_generate(model: registry_pb2.Model, prompt: str, system: str | None, raw: bool) -> Prompt:
    if raw:
        return Prompt(prompt, add_bos=model.add_bos_token)
    messages: list[dict[str, Any]] = []
    sys_text = model.system if system is None else system
    if sys_text:
        messages.append({"role": "system", "content": sys_text})
    messages.append({"role": "user", "content": prompt})
    return render_messages(model, messages)
