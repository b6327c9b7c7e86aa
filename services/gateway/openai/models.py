"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.v1 import registry_pb2
from services.gateway import errors, inference
from services.gateway.http import json_response

router = APIRouter()


def _entry(m: registry_pb2.Model) -> dict[str, Any]:
    parts = m.full_name.split("/")
    owner = parts[-2] if len(parts) >= 2 else "library"
    return {"id": m.name, "object": "model", "created": m.modified_at.seconds, "owned_by": owner}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    try:
        resp = await request.app.state.backends.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=30)
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    return json_response({"object": "list", "data": [_entry(m) for m in resp.models]})


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    found = await inference.resolve(request.app.state.backends, model)
    return json_response({**_entry(found), "id": model})
