"""POST /v1/messages/count_tokens: the tokens of the prompt /v1/messages would render for
the same body (system, tools and thinking included), counted by the model's tokenizer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import inference, pipeline
from services.gateway.anthropic import messages as anthropic
from services.gateway.errors import bad_request
from services.gateway.http import json_response, parse_body
from services.gateway.native.tokenize import on_instance

router = APIRouter()


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    req = await parse_body(request, anthropic.MessagesRequest)
    if not req.model:
        raise bad_request("model is required")
    if not req.messages:
        raise bad_request("messages is required")
    backends = request.app.state.backends
    job = await pipeline.prepare_chat(
        backends,
        req.model,
        anthropic.to_ollama_messages(req),
        tools=anthropic.tools(req),
        think=pipeline.parse_think(anthropic.think(req)),
        relax_think=True,
    )

    async def count(inst: inference.Instance) -> int:
        return len(await inst.tokenize(job.prompt.text, job.prompt.add_bos))

    return json_response({"input_tokens": await on_instance(backends, req.model, count)})
