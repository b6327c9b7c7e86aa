"""POST /v1/embeddings."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import inference
from services.gateway.errors import bad_request
from services.gateway.http import json_response, parse_json
from services.gateway.native.common import keep_alive
from services.gateway.native.embed import embed_inputs, normalize, run_embed

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse_json(request)
    if not body.get("model"):
        raise bad_request("model is required", "model_required")
    raw_input = body.get("input")
    if raw_input is None or raw_input == []:
        raise bad_request("invalid input")
    inputs = embed_inputs([""] if raw_input == "" else raw_input)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
    dimensions = body.get("dimensions") or 0
    if not isinstance(dimensions, int) or dimensions < 0:
        raise bad_request("invalid value for 'dimensions'")
    backends = request.app.state.backends
    model = await inference.resolve(backends, body["model"])
    vectors, count, _ = await run_embed(backends, model, inputs, True, None, keep_alive(body.get("keep_alive")))
    data: list[dict[str, Any]] = []
    for i, vec in enumerate(vectors):
        v = normalize(vec, dimensions)
        emb: Any = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encoding == "base64" else v
        data.append({"object": "embedding", "embedding": emb, "index": i})
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )
