"""POST /api/generate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.v1 import runner_pb2
from services.gateway import formats, inference, options, pipeline, prompts
from services.gateway.errors import bad_request
from services.gateway.http import collect, json_response, ndjson_stream, now_rfc3339, parse_body
from services.gateway.native.common import keep_alive, metrics

router = APIRouter()
MAX_TOKEN_ID = 2**31 - 1


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    format: Any = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: Any = None
    grammar: str | None = None  # beyond Ollama: raw GBNF (llama-server's `grammar`)
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(False, alias="_debug_render_only")


def _check_context(context: list[int] | None) -> list[int]:
    if context and not all(0 <= t <= MAX_TOKEN_ID for t in context):
        raise bad_request("context token id out of range", "invalid_context")
    return context or []


def _final(final: runner_pb2.GenerateResponse, context: list[int], started: int, load_ns: int) -> dict[str, Any]:
    """The last chunk's fields in Ollama's order: done_reason, context, then the metrics."""
    out = metrics(final, started, load_ns)
    if context:
        out = {"done_reason": out.pop("done_reason"), "context": context, **out}
    return out


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    final["response"] = "".join(c.get("response", "") for c in chunks)
    thinking = "".join(c.get("thinking", "") for c in chunks)
    if thinking:
        final["thinking"] = thinking
    lps = [lp for c in chunks for lp in c.get("logprobs", [])]
    if lps:
        final["logprobs"] = lps
    return final


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    req = await parse_body(request, GenerateRequest)
    started = time.monotonic_ns()
    if not req.model:
        raise bad_request("model is required", "model_required")
    if req.raw and (req.template or req.system or req.context):
        raise bad_request("raw mode does not support template, system, or context")
    context = _check_context(req.context)
    think = pipeline.parse_think(req.think)
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    ka = keep_alive(req.keep_alive)
    merged = options.merge(options.model_params(model), req.options)
    load = options.to_load(merged)

    if not req.prompt and not req.suffix:  # load or unload only
        reason = "load"
        if ka == 0:
            await inference.unload(backends, model)
            reason = "unload"
        else:
            lease = await inference.acquire(backends, model, load, ka, "")
            await inference.release(backends, lease)
        return json_response(
            {"model": req.model, "created_at": now_rfc3339(), "response": "", "done": True, "done_reason": reason}
        )

    pipeline.check_capabilities(model, req.model, "generate", None, req.suffix)
    think = pipeline.resolve_think(model, req.model, think)
    rendered = await asyncio.to_thread(
        prompts.render_generate, model, req.prompt, req.system, req.raw, req.template, req.suffix, think
    )
    job = pipeline.Job(
        model=model,
        prompt=rendered,
        sampling=options.to_sampling(merged),
        load=load,
        keep_alive=ka,
        format=req.format,
        grammar=formats.check_grammar(req.grammar),
        think=think.enabled and not req.raw,
        think_tags=prompts.thinking_tags(model, req.template),
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        truncate=req.truncate,
        shift=req.shift,
        context=context,
        return_context=not req.raw,  # Ollama returns no context in raw mode
    )
    if req.debug_render_only:
        info = pipeline.debug_info(rendered, [{"images": req.images}])
        out = {"model": req.model, "created_at": now_rfc3339(), "response": "", "done": True, "_debug_info": info}
        return json_response(out)
    runner_stream = pipeline.run(backends, job)

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for ev in runner_stream:
                out: dict[str, Any] = {"model": req.model, "created_at": now_rfc3339(), "response": ev.content}
                if ev.thinking:
                    out["thinking"] = ev.thinking
                out["done"] = ev.done
                if ev.logprobs:
                    out["logprobs"] = ev.logprobs
                if ev.final is not None:
                    out.update(_final(ev.final, ev.context, started, ev.load_ns))
                yield out
        finally:
            await runner_stream.aclose()

    if req.stream:
        return await ndjson_stream(chunks())
    return await collect(request, chunks(), _merge)
