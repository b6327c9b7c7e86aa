"""One generation, shared by every API surface: checks, runner stream, and the
thinking and tool-call parsers over its text. Surfaces only reshape the events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

from corral.v1 import common_pb2, registry_pb2, runner_pb2
from services.gateway import formats, inference, options, prompts, tokens, toolchoice
from services.gateway.backends import Backends
from services.gateway.errors import HTTPError, bad_request
from services.gateway.prompts import Prompt, Think
from services.gateway.thinking import ThinkingParser
from services.gateway.tools import ToolParser

THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(value: Any) -> Think:
    if value is None:
        return Think()
    if isinstance(value, bool):
        return Think(value, "", True)
    if isinstance(value, str) and value in THINK_LEVELS:
        return Think(True, value, True)
    if isinstance(value, str) and value in ("true", "false"):
        return Think(value == "true", "", True)
    shown = value if isinstance(value, str) else str(value)
    raise bad_request(
        f'invalid think value: "{shown}" (must be "high", "medium", "low", "max", true, or false)', "invalid_think"
    )


LEVELS = ("low", "medium", "high")


def think_levels(model: registry_pb2.Model) -> tuple[str, ...]:
    """The levels a thinking model takes: its template must read one (gpt-oss style: Go
    `.ThinkLevel` or Jinja `reasoning_effort`); other thinking models are on/off only."""
    if "ThinkLevel" in model.template or (not model.template and "reasoning_effort" in model.gguf_chat_template):
        return LEVELS
    return ()


def resolve_think(
    model: registry_pb2.Model, name: str, think: Think, relax: bool = False, coerce_level: bool = False
) -> Think:
    """Thinking models think by default; others refuse `think` (the Anthropic surface drops it).
    A level the model cannot take is refused, or with `coerce_level` (OpenAI's
    reasoning_effort) taken as plain on."""
    caps = set(model.capabilities)
    if "thinking" in caps:
        if not think.is_set:
            return Think(True, "", False)
        levels = think_levels(model)
        if think.level and think.level not in levels:
            if coerce_level:
                return Think(True, "", True)
            if not levels:
                raise HTTPError(
                    400,
                    f'"{name}" does not support think levels (think: "{think.level}"); use true or false',
                    "invalid_think",
                )
            raise HTTPError(
                400,
                f'"{name}" does not support think level "{think.level}" (supported: {", ".join(levels)})',
                "invalid_think",
            )
        return think
    if think.enabled:
        if relax:
            return Think()
        raise HTTPError(400, f'"{name}" does not support thinking', "thinking_unsupported")
    return think


def check_capabilities(model: registry_pb2.Model, name: str, action: str, tools: Any, suffix: str = "") -> None:
    caps = set(model.capabilities)
    if not caps:
        return
    if "completion" not in caps:
        raise HTTPError(400, f'"{name}" does not support {action}', "capability_missing")
    missing = [c for c, wanted in (("tools", bool(tools)), ("insert", bool(suffix))) if wanted and c not in caps]
    if missing:
        full = model.full_name or name
        raise HTTPError(400, "\n".join(f"{full} does not support {c}" for c in missing), "capability_missing")


def logprobs_json(items: Any) -> list[dict[str, Any]]:
    def one(t: runner_pb2.TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}

    return [{**one(p.sampled), "top_logprobs": [one(t) for t in p.top]} for p in items]


@dataclass
class Job:
    model: registry_pb2.Model
    prompt: Prompt
    sampling: common_pb2.SamplingOptions
    load: common_pb2.LoadOptions
    keep_alive: float | None
    format: Any = None
    tools: list[dict[str, Any]] | None = None
    tool_tag: str = "{"
    tool_choice: toolchoice.ToolChoice = field(default_factory=toolchoice.ToolChoice)
    tool_format: toolchoice.ToolFormat = field(default_factory=toolchoice.ToolFormat)
    grammar: str = ""  # raw GBNF; wins over tool_choice and format
    think_budget: int = 0  # > 0: the runner closes the thinking block after this many tokens
    think: bool = False
    think_tags: tuple[str, str] = ("<think>", "</think>")
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    shift: bool = True  # Ollama's default: a full context shifts rather than stopping
    truncate: bool = True  # Ollama's default: cut the oldest messages, then tokens, rather than fail
    history: tokens.History | None = None  # a chat's messages, re-rendered to drop the oldest
    context: list[int] = field(default_factory=list)  # generate's deprecated context, written first
    return_context: bool = False  # the final event carries the tokens of prompt + output


@dataclass
class Event:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    final: runner_pb2.GenerateResponse | None = None
    load_ns: int = 0
    context: list[int] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.content or self.thinking or self.tool_calls or self.logprobs or self.done)


def runner_request(job: Job) -> runner_pb2.GenerateRequest:
    req = runner_pb2.GenerateRequest(
        prompt=job.prompt.text,
        prompt_tokens=job.prompt_tokens,
        sampling=job.sampling,
        add_bos=job.prompt.add_bos,
        logprobs=job.logprobs,
        top_logprobs=job.top_logprobs,
        truncate=job.truncate,
        no_shift=not job.shift,
    )
    calls = toolchoice.spec(job.tool_choice, job.tools, job.tool_format)
    c = formats.constraint(job.format, job.grammar, calls)
    if c is not None:
        req.constraint.CopyFrom(c)
    if job.think:
        req.thinking.CopyFrom(formats.thinking(job.think_tags, job.prompt.text, job.think_budget))
    return req


def preparer(job: Job) -> inference.Prepare | None:
    """The prompt's last steps, on the leased instance because they need its tokenizer and
    context length: drop the oldest chat messages that do not fit, write `context` first."""
    history = job.history if job.truncate else None  # `truncate: false` keeps every message
    if history is None and not job.context:
        return None

    async def prepare(instance: inference.Instance, req: runner_pb2.GenerateRequest) -> None:
        prompt = job.prompt
        if history is not None:
            prompt = await tokens.fit_history(instance, history, prompt)
        if job.context:
            prompt = await tokens.with_context(instance, job.model, job.context, prompt)
        req.prompt, req.add_bos = prompt.text, prompt.add_bos

    return prepare


async def run(backends: Backends, job: Job) -> AsyncGenerator[Event, None]:
    if not 0 <= job.top_logprobs <= 20:
        raise bad_request("top_logprobs must be between 0 and 20", "invalid_top_logprobs")
    req = runner_request(job)
    thinker = ThinkingParser(job.think_tags, job.prompt.text) if job.think else None
    parse_calls = job.tools and job.tool_choice.mode != toolchoice.NONE and not job.grammar
    tooler = ToolParser(job.tools or [], job.tool_tag) if parse_calls else None
    load_ns = 0
    chunks = inference.generate(
        backends, job.model, req, job.load, job.keep_alive, preparer(job), context=job.return_context
    )
    async with contextlib.aclosing(chunks):  # closing the events ends the lease at once
        async for chunk in chunks:
            load_ns += chunk.load_duration_ns
            r = chunk.response
            ev = Event(done=r.done, logprobs=logprobs_json(r.logprobs) if r.logprobs else [])
            text = r.text
            if thinker is not None:
                ev.thinking, text = thinker.add(text, r.done)
            if tooler is not None:
                ev.tool_calls, text = tooler.add(text, r.done)
            ev.content = text
            if r.done:
                ev.final, ev.load_ns, ev.context = r, load_ns, chunk.context
            if not ev.empty():
                yield ev


async def prepare_chat(
    backends: Backends,
    name: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    fmt: Any = None,
    request_options: dict[str, Any] | None = None,
    think: Think | None = None,
    keep_alive: float | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    relax_think: bool = False,
    coerce_level: bool = False,
    tool_choice: toolchoice.ToolChoice | None = None,
    grammar: str = "",
    think_budget: int = 0,
    model: registry_pb2.Model | None = None,
) -> Job:
    """Resolve (unless the caller already has the model), check and render a chat: what
    every chat-shaped surface needs."""
    model = model if model is not None else await inference.resolve(backends, name)
    merged = options.merge(options.model_params(model), request_options)
    check_capabilities(model, name, "chat", tools)
    resolved = resolve_think(model, name, think or Think(), relax=relax_think, coerce_level=coerce_level)
    history = tokens.History(
        prompts.with_system(model, messages), functools.partial(prompts.render_chat, model, tools=tools, think=resolved)
    )
    # Templates are untrusted and may run up to their time limit: keep them off the event loop.
    rendered = await asyncio.to_thread(history.render, history.messages)
    return Job(
        model=model,
        prompt=rendered,
        history=history,
        sampling=options.to_sampling(merged),
        load=options.to_load(merged),
        keep_alive=keep_alive,
        format=fmt,
        tools=tools,
        tool_tag=prompts.tool_tag(model),
        tool_choice=tool_choice or toolchoice.ToolChoice(),
        tool_format=prompts.tool_format(model),
        grammar=formats.check_grammar(grammar),
        think_budget=think_budget if resolved.enabled else 0,
        think=resolved.enabled,
        think_tags=prompts.thinking_tags(model),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def debug_info(prompt: Prompt, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Ollama's `_debug_info` for `_debug_render_only`: the prompt as rendered, no model run.
    (History that would not fit is cut later, on the leased instance; this is before that.)"""
    images = sum(len(m.get("images") or []) for m in messages)
    return {"rendered_template": prompt.text, "image_count": images}


MAX_CHOICES = 16  # bounded where requests are parsed (openai.common.choice_count)


async def run_choices(backends: Backends, job: Job, n: int) -> AsyncGenerator[tuple[int, Event], None]:
    """`n` generations of one job side by side, events tagged with their choice index as
    they come. The runner evaluates their common prompt once (prefix sharing), so n
    choices cost little more prompt time than one. With a seed, choice i uses seed + i,
    so seeded choices differ yet repeat."""
    if n == 1:
        async with contextlib.aclosing(run(backends, job)) as events:
            async for ev in events:
                yield 0, ev
        return
    queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()

    async def pump(i: int) -> None:
        sampling = common_pb2.SamplingOptions()
        sampling.CopyFrom(job.sampling)
        if sampling.HasField("seed") and sampling.seed >= 0:
            sampling.seed += i
        try:
            async with contextlib.aclosing(run(backends, replace(job, sampling=sampling))) as events:
                async for ev in events:
                    await queue.put((i, ev))
        except Exception as err:  # handed to the consumer, which raises it
            await queue.put((i, err))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    try:
        running = n
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
