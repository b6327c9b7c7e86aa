"""POST /api/generate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from services.gateway import inference, options, pipeline, prompts
from services.gateway.errors import bad_request
from services.gateway.http import collect, json_response, ndjson_stream, now_rfc3339, parse_body
from services.gateway.native.common import keep_alive, metrics

router = APIRouter()


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
    truncate: bool = True
    logprobs: bool = False
    top_logprobs: int = 0


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
        think=think.enabled and not req.raw,
        think_tags=prompts.thinking_tags(model, req.template),
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
    job.truncate = req.truncate
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
                    out.update(metrics(ev.final, started, ev.load_ns))
                yield out
        finally:
            await runner_stream.aclose()

    if req.stream:
        return await ndjson_stream(chunks())
    return await collect(request, chunks(), _merge)
