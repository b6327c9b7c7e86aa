"""POST /api/generate."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from corral.v1 import runner_pb2
from services.gateway import inference, options, prompts
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
    think: bool | str | None = None


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    final["response"] = "".join(c.get("response", "") for c in chunks)
    return final


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    req = await parse_body(request, GenerateRequest)
    started = time.monotonic_ns()
    if not req.model:
        raise bad_request("model is required", "model_required")
    if req.raw and (req.template or req.system or req.context):
        raise bad_request("raw mode does not support template, system, or context")
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    ka = keep_alive(req.keep_alive)
    merged = options.merge(options.model_params(model), req.options)
    load = options.to_load(merged)

    if not req.prompt:  # load or unload only
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

    rendered = prompts.render_generate(model, req.prompt, req.system, req.raw)
    runner_req = runner_pb2.GenerateRequest(
        prompt=rendered.text, sampling=options.to_sampling(merged), add_bos=rendered.add_bos
    )

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        load_ns = 0
        async for chunk in inference.generate(backends, model, runner_req, load, ka):
            load_ns += chunk.load_duration_ns
            r = chunk.response
            out: dict[str, Any] = {"model": req.model, "created_at": now_rfc3339(), "response": r.text, "done": r.done}
            if r.done:
                out.update(metrics(r, started, load_ns))
            elif not r.text:
                continue
            yield out

    if req.stream:
        return await ndjson_stream(chunks())
    return await collect(request, chunks(), _merge)
