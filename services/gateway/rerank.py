"""POST /api/rerank and POST /v1/rerank: cross-encoder reranking in llama-server's (Jina/Cohere) shape.

Request: `model`, `query`, `documents` (strings, or objects with `text`), optional `top_n`,
`return_documents`, and Corral's `truncate`, `options`, `keep_alive`. Response: `results`
sorted by `relevance_score` (descending; ties keep input order) with each document's
`index` and, when asked, `document: {"text": ...}`, plus `model`, `object` and `usage`.
Both paths answer the same body; errors come in the surface's shape (Ollama's `{"error"}`
on /api, OpenAI's envelope on /v1).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.v1 import registry_pb2, runner_pb2
from services.gateway import inference, options
from services.gateway.errors import HTTPError, bad_request
from services.gateway.http import json_response, parse_json
from services.gateway.native.common import keep_alive

router = APIRouter()


def documents_of(value: Any) -> list[str]:
    """Strings or `{"text": ...}` objects (Cohere v1, Jina); at least one."""
    if not isinstance(value, list) or not value:
        raise bad_request('"documents" must be a non-empty array of strings', "invalid_documents")
    docs: list[str] = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise bad_request('"documents" must be strings or objects with a "text" string', "invalid_documents")
        docs.append(item)
    return docs


def top_n_of(value: Any, n_docs: int) -> int:
    if value is None:
        return n_docs
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request('"top_n" must be a positive integer', "invalid_top_n")
    return min(value, n_docs)


def check_rank(model: registry_pb2.Model, name: str) -> None:
    caps = set(model.capabilities)
    if caps and "rank" not in caps:
        full = model.full_name or name
        raise HTTPError(
            400,
            f"{full} does not support rerank (it is not a cross-encoder with rank pooling)",
            "capability_missing",
        )


def results(scores: list[float], docs: list[str], top_n: int, with_docs: bool) -> list[dict[str, Any]]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]
    out: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if with_docs:
            item["document"] = {"text": docs[i]}
        out.append(item)
    return out


@router.post("/api/rerank")
@router.post("/v1/rerank")
async def rerank(request: Request) -> Response:
    body = await parse_json(request)
    name = body.get("model")
    if not name or not isinstance(name, str):
        raise bad_request("model is required", "model_required")
    query = body.get("query")
    if not isinstance(query, str):
        raise bad_request('"query" must be a string', "invalid_query")
    docs = documents_of(body.get("documents"))
    top_n = top_n_of(body.get("top_n"), len(docs))
    with_docs = body.get("return_documents", False)
    truncate = body.get("truncate", True)
    if not isinstance(with_docs, bool) or not isinstance(truncate, bool):
        raise bad_request('"return_documents" and "truncate" must be booleans', "invalid_field")
    opts = body.get("options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request('"options" must be an object', "invalid_options")
    ka = keep_alive(body.get("keep_alive"))
    backends = request.app.state.backends
    model = await inference.resolve(backends, name)
    check_rank(model, name)
    load = options.to_load(options.merge(options.model_params(model), opts))
    req = runner_pb2.RerankRequest(query=query, documents=docs, truncate=truncate)
    resp, _load_ns = await inference.rerank(backends, model, req, load, ka)
    count = resp.prompt_eval_count
    return json_response(
        {
            "model": name,
            "object": "list",
            "results": results(list(resp.scores), docs, top_n, with_docs),
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )
