"""POST /api/tokenize and /api/detokenize (Ollama #12031, llama-server's shapes), and the
leased-instance helper /v1/messages/count_tokens shares: tokens need the model's
tokenizer, which lives in a loaded instance, so each call takes a lease like a generation."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from services.gateway import errors, inference, options
from services.gateway.backends import Backends
from services.gateway.errors import bad_request
from services.gateway.http import json_response, parse_body
from services.gateway.native.common import keep_alive

router = APIRouter()
T = TypeVar("T")


async def on_instance(
    backends: Backends,
    name: str,
    fn: Callable[[inference.Instance], Awaitable[T]],
    request_options: dict[str, Any] | None = None,
    keep: Any = None,
) -> T:
    """Run `fn` on a leased instance of model `name` (loading it if needed)."""
    model = await inference.resolve(backends, name)
    load = options.to_load(options.merge(options.model_params(model), request_options))
    lease = await inference.acquire(backends, model, load, keep_alive(keep), uuid.uuid4().hex)
    try:
        runner = backends.runner(lease.runner_address)
        return await fn(inference.Instance(runner, lease.instance_id, lease.context_length))
    except grpc.RpcError as err:
        raise errors.from_rpc(err, name) from err
    finally:
        await inference.release(backends, lease)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    content: str | None = None
    prompt: str | None = None  # Ollama's generate field name, accepted too
    add_special: bool = False  # llama-server's default: no BOS
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    tokens: list[int] = []
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


@router.post("/api/tokenize")
async def tokenize(request: Request) -> Response:
    req = await parse_body(request, TokenizeRequest)
    if not req.model:
        raise bad_request("model is required", "model_required")
    text = req.content if req.content is not None else req.prompt
    if text is None:
        raise bad_request("content is required")

    async def run(inst: inference.Instance) -> list[int]:
        return await inst.tokenize(text, req.add_special)

    tokens = await on_instance(request.app.state.backends, req.model, run, req.options, req.keep_alive)
    return json_response({"model": req.model, "tokens": tokens})


@router.post("/api/detokenize")
async def detokenize(request: Request) -> Response:
    req = await parse_body(request, DetokenizeRequest)
    if not req.model:
        raise bad_request("model is required", "model_required")
    if any(t < 0 for t in req.tokens):
        raise bad_request("tokens must be non-negative token ids")

    async def run(inst: inference.Instance) -> str:
        return await inst.detokenize(req.tokens)

    content = await on_instance(request.app.state.backends, req.model, run, req.options, req.keep_alive)
    return json_response({"model": req.model, "content": content})
