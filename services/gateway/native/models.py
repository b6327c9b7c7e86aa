"""Model management: /api/tags, /api/create, /api/blobs/:digest (the rest is in manage.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response
from google.protobuf.struct_pb2 import Struct
from pydantic import BaseModel, ConfigDict, Field

from corral.v1 import common_pb2, registry_pb2
from services.gateway import errors
from services.gateway.http import json_response, parse_body, rfc3339
from services.gateway.native.common import progress_reply

router = APIRouter()
UPLOAD_CHUNK = 1 << 20


def details_json(d: common_pb2.ModelDetails, parent: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": d.format,
        "family": d.family,
        "families": list(d.families) or None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }
    if parent:
        out = {"parent_model": d.parent_model, **out}
    return out


def digest_hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> Response:
    try:
        resp = await request.app.state.backends.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=30)
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    models = [
        {
            "name": m.name,
            "model": m.name,
            "modified_at": rfc3339(m.modified_at.ToDatetime().replace(tzinfo=None)),
            "size": m.size_bytes,
            "digest": digest_hex(m.manifest_digest),
            "details": details_json(m.details),
        }
        for m in resp.models
    ]
    return json_response({"models": models})


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""
    stream: bool = True
    from_: str = Field("", alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    draft_files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    license: str | list[str] | None = None
    quantize: str = ""
    quantization: str = ""
    messages: list[dict[str, Any]] | None = None
    modelfile: str = ""  # older Ollama clients send the Modelfile text
    requires: str = ""


@router.post("/api/create")
async def create(request: Request) -> Response:
    body = await parse_body(request, CreateRequest)
    name = body.model or body.name
    if not name:
        raise errors.bad_request("model is required", "model_required")
    messages = [
        registry_pb2.ModelMessage(role=str(m.get("role") or ""), content=str(m.get("content") or ""))
        for m in body.messages or []
    ]
    req = registry_pb2.CreateModelRequest(
        messages=messages,
        modelfile=body.modelfile,
        requires=body.requires,
        name=name,
        files=body.files or {},
        adapters=body.adapters or {},
        draft_files=body.draft_files or {},
        quantize=body.quantize or body.quantization,
        license=[body.license] if isinstance(body.license, str) else (body.license or []),
    )
    setattr(req, "from", body.from_)  # `from` is a Python keyword
    if body.template is not None:
        req.template = body.template
    if body.system is not None:
        req.system = body.system
    if body.parameters:
        params = Struct()
        params.update(body.parameters)
        req.parameters.CopyFrom(params)
    return await progress_reply(request.app.state.backends.registry.CreateModel(req), body.stream)


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, request: Request) -> Response:
    try:
        resp = await request.app.state.backends.registry.StatBlob(
            registry_pb2.StatBlobRequest(digest=digest), timeout=30
        )
    except grpc.RpcError as err:
        http = errors.from_rpc(err)
        return Response(status_code=http.status)
    return Response(status_code=200 if resp.exists else 404)


@router.post("/api/blobs/{digest}")
async def blob_upload(digest: str, request: Request) -> Response:
    async def chunks() -> AsyncIterator[registry_pb2.UploadBlobRequest]:
        yield registry_pb2.UploadBlobRequest(digest=digest)
        async for data in request.stream():
            for i in range(0, len(data), UPLOAD_CHUNK):
                yield registry_pb2.UploadBlobRequest(chunk=data[i : i + UPLOAD_CHUNK])

    try:
        resp = await request.app.state.backends.registry.UploadBlob(chunks())
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    return Response(status_code=201 if resp.created else 200)
