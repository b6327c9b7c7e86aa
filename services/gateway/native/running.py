"""What is loaded where: /api/ps."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.v1 import scheduler_pb2
from services.gateway import errors
from services.gateway.http import json_response, rfc3339
from services.gateway.native.models import details_json, digest_hex

router = APIRouter()


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    try:
        resp = await request.app.state.backends.scheduler.ListLoadedModels(
            scheduler_pb2.ListLoadedModelsRequest(), timeout=30
        )
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    models = [
        {
            "name": m.name,
            "model": m.name,
            "size": m.size_bytes,
            "digest": digest_hex(m.manifest_digest),
            "details": details_json(m.details, parent=False),
            "expires_at": rfc3339(m.expires_at.ToDatetime()),
            "size_vram": m.size_vram_bytes,
            "context_length": m.context_length,
        }
        for m in resp.models
    ]
    return json_response({"models": models})
