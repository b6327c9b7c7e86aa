"""POST /v1/embeddings."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import inference
from services.gateway.errors import bad_request
from services.gateway.http import JsonModel, json_response, parse_body
from services.gateway.native.common import keep_alive
from services.gateway.native.embed import embed_inputs, normalize, run_embed

router = APIRouter()


class EmbeddingsRequest(JsonModel):
    model: str = ""
    input: Any = None  # a string, strings, token ids or lists of them (checked by embed_inputs)
    encoding_format: str | None = None
    dimensions: int | None = None
    keep_alive: float | str | None = None  # Ollama's, accepted on /v1 as Ollama does


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    req = await parse_body(request, EmbeddingsRequest)
    if not req.model:
        raise bad_request("model is required", "model_required")
    if req.input is None or req.input == []:
        raise bad_request("invalid input")
    inputs = embed_inputs([""] if req.input == "" else req.input)
    encoding = req.encoding_format or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
    dimensions = req.dimensions or 0
    if dimensions < 0:
        raise bad_request("invalid value for 'dimensions'")
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    vectors, count, _ = await run_embed(backends, model, inputs, True, None, keep_alive(req.keep_alive))
    data: list[dict[str, Any]] = []
    for i, vec in enumerate(vectors):
        v = normalize(vec, dimensions)
        emb: Any = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encoding == "base64" else v
        data.append({"object": "embedding", "embedding": emb, "index": i})
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )
