"""POST /api/embed and the legacy POST /api/embeddings."""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from corral.v1 import registry_pb2, runner_pb2
from services.gateway import inference, options
from services.gateway.backends import Backends
from services.gateway.errors import HTTPError, bad_request
from services.gateway.http import json_response, parse_body
from services.gateway.native.common import keep_alive

router = APIRouter()


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: Any = None
    truncate: bool = True
    dimensions: int = 0
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


def normalize(vec: list[float], dimensions: int = 0) -> list[float]:
    """L2-normalise, after cutting to `dimensions`; more dimensions than the model has is a 400."""
    if dimensions > len(vec):
        raise HTTPError(
            400, f"dimensions {dimensions} is larger than the model's embedding size {len(vec)}", "invalid_dimensions"
        )
    if 0 < dimensions < len(vec):
        vec = vec[:dimensions]
    if any(math.isnan(x) or math.isinf(x) for x in vec):
        raise HTTPError(500, "embedding contains NaN or Inf values", "invalid_embedding")
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec


def embed_inputs(value: Any) -> list[runner_pb2.EmbedInput]:
    """A string, a list of strings, a list of token ids or a list of token-id lists."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [runner_pb2.EmbedInput(text=value)]
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return [runner_pb2.EmbedInput(text=v) for v in value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [runner_pb2.EmbedInput(tokens=runner_pb2.TokenIds(ids=value))]
        if all(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value):
            return [runner_pb2.EmbedInput(tokens=runner_pb2.TokenIds(ids=v)) for v in value]
    raise bad_request("invalid input type", "invalid_input")


async def run_embed(
    backends: Backends,
    model: registry_pb2.Model,
    inputs: list[runner_pb2.EmbedInput],
    truncate: bool,
    opts: dict[str, Any] | None,
    ka: float | None,
) -> tuple[list[list[float]], int, int]:
    """Vectors (raw, as the runner returns them), prompt tokens, load time."""
    merged = options.merge(options.model_params(model), opts)
    load = options.to_load(merged)
    if not inputs:
        lease = await inference.acquire(backends, model, load, ka, "")
        await inference.release(backends, lease)
        return [], 0, lease.load_duration_ns
    req = runner_pb2.EmbedRequest(inputs=inputs, truncate=truncate, normalize=False)
    resp, load_ns = await inference.embed(backends, model, req, load, ka)
    return [list(e.values) for e in resp.embeddings], resp.prompt_eval_count, load_ns


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    req = await parse_body(request, EmbedRequest)
    started = time.monotonic_ns()
    inputs = embed_inputs(req.input)
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    vectors, count, load_ns = await run_embed(
        backends, model, inputs, req.truncate, req.options, keep_alive(req.keep_alive)
    )
    out: dict[str, Any] = {
        "model": req.model,
        "embeddings": [normalize(v, req.dimensions) for v in vectors],
        "total_duration": time.monotonic_ns() - started,
        "load_duration": load_ns,
    }
    if count:
        out["prompt_eval_count"] = count
    return json_response(out)


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    req = await parse_body(request, EmbeddingsRequest)
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    inputs = [runner_pb2.EmbedInput(text=req.prompt)] if req.prompt else []
    vectors, _, _ = await run_embed(backends, model, inputs, True, req.options, keep_alive(req.keep_alive))
    return json_response({"embedding": vectors[0] if vectors else []})
