"""Model management: /api/show, /api/copy, /api/delete, /api/pull, /api/push."""

from __future__ import annotations

import json
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response
from google.protobuf.struct_pb2 import Struct
from pydantic import BaseModel, ConfigDict

from corral.v1 import registry_pb2
from services.gateway import errors
from services.gateway.http import json_response, parse_body, rfc3339
from services.gateway.native.common import progress_reply
from services.gateway.native.models import details_json

router = APIRouter()


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""
    system: str | None = None
    verbose: bool = False
    options: dict[str, Any] | None = None


@router.post("/api/show")
async def show(request: Request) -> Response:
    body = await parse_body(request, ShowRequest)
    name = body.model or body.name
    if not name:
        raise errors.bad_request("model is required", "model_required")
    req = registry_pb2.ShowModelRequest(name=name, verbose=body.verbose)
    if body.system is not None:
        req.system = body.system
    if body.options:
        options = Struct()
        options.update(body.options)
        req.options.CopyFrom(options)
    try:
        r = await request.app.state.backends.registry.ShowModel(req, timeout=60)
    except grpc.RpcError as err:
        raise errors.from_rpc(err, name) from err
    out: dict[str, Any] = {}
    for key in ("license", "modelfile", "parameters", "template", "system"):
        if value := getattr(r, key):
            out[key] = value
    out["details"] = details_json(r.details)
    if r.messages:
        out["messages"] = [{"role": m.role, "content": m.content} for m in r.messages]
    out["model_info"] = json.loads(r.model_info_json or "{}")
    if r.tensors:
        out["tensors"] = [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in r.tensors]
    out["capabilities"] = list(r.capabilities)
    out["modified_at"] = rfc3339(r.modified_at.ToDatetime().replace(tzinfo=None))
    if r.requires:
        out["requires"] = r.requires
    return json_response(out)


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = ""
    destination: str = ""


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    body = await parse_body(request, CopyRequest)
    req = registry_pb2.CopyModelRequest(source=body.source, destination=body.destination)
    try:
        await request.app.state.backends.registry.CopyModel(req, timeout=60)
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    return Response(status_code=200)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    body = await parse_body(request, DeleteRequest)
    name = body.model or body.name
    try:
        await request.app.state.backends.registry.DeleteModel(registry_pb2.DeleteModelRequest(name=name), timeout=60)
    except grpc.RpcError as err:
        raise errors.from_rpc(err, name) from err
    return Response(status_code=200)


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool = True


async def _transfer(request: Request, method: str) -> Response:
    body = await parse_body(request, TransferRequest)
    name = body.model or body.name
    if not name:
        raise errors.bad_request("model is required", "model_required")
    stub = request.app.state.backends.registry
    rpc = stub.PullModel(registry_pb2.PullModelRequest(name=name, insecure=body.insecure)) if method == "pull" else (
        stub.PushModel(registry_pb2.PushModelRequest(name=name, insecure=body.insecure)))  # fmt: skip

    return await progress_reply(rpc, body.stream)


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    return await _transfer(request, "pull")


@router.post("/api/push")
async def push(request: Request) -> Response:
    return await _transfer(request, "push")
