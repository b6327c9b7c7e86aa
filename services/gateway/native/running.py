"""What is loaded where, and on what: /api/ps and /api/info."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral import __version__
from corral.v1 import common_pb2, scheduler_pb2
from services.gateway import errors
from services.gateway.http import json_response, rfc3339
from services.gateway.native.meta import OLLAMA_COMPAT_VERSION
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
            # Corral's own: sequences generating now, of the instance's num_parallel.
            "active_sequences": m.active_leases,
            "num_parallel": m.num_parallel,
            # Corral's own: other models sharing the instance (same weights and load options).
            "also_serving": list(m.also_serving),
        }
        for m in resp.models
    ]
    return json_response({"models": models})


@router.get("/api/status")
async def status(request: Request) -> Response:
    """Ollama 0.16's status (Corral has no cloud models, so cloud is always disabled), plus
    whether each service answers and what the scheduler holds."""
    backends = request.app.state.backends
    registry_ok, scheduler_ok = await asyncio.gather(
        backends.serving(backends.registry_addr), backends.serving(backends.scheduler_addr)
    )
    body: dict[str, object] = {
        "cloud": {"disabled": True, "source": "none"},
        "version": OLLAMA_COMPAT_VERSION,
        "corral_version": __version__,
        "services": {
            "gateway": "serving",
            "registry": "serving" if registry_ok else "unavailable",
            "scheduler": "serving" if scheduler_ok else "unavailable",
        },
    }
    if scheduler_ok:
        with contextlib.suppress(grpc.RpcError):
            info = await backends.scheduler.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=5)
            body["runners"] = len(info.runners)
            body["loaded_models"] = sum(r.loaded_models for r in info.runners)
            body["queued_requests"] = info.queued_requests
    return json_response(body)


_KINDS = {common_pb2.DEVICE_KIND_CPU: "cpu", common_pb2.DEVICE_KIND_CUDA: "cuda"}


@router.get("/api/info")
async def info(request: Request) -> Response:
    """Devices, runners and limits (Ollama has no such endpoint; its tests read env vars instead)."""
    try:
        resp = await request.app.state.backends.scheduler.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=30)
    except grpc.RpcError as err:
        raise errors.from_rpc(err) from err
    devices = [
        {
            "id": u.device.id,
            "kind": _KINDS.get(u.device.kind, "unknown"),
            "index": u.device.index,
            "name": u.device.name,
            "host": u.device.host,
            "total_memory": u.device.total_memory_bytes,
            "free_memory": u.device.free_memory_bytes,
            "allocated_memory": u.allocated_bytes,
            "available_memory": u.available_bytes,
            "runner": {"id": r.runner_id, "address": r.address, "loaded_models": r.loaded_models},
        }
        for r in resp.runners
        for u in r.devices
    ]
    return json_response(
        {
            "version": OLLAMA_COMPAT_VERSION,
            "corral_version": __version__,
            "devices": devices,
            "default_context_length": resp.default_context_length,
            "default_keep_alive": resp.default_keep_alive_seconds,
            "limits": {
                "max_loaded_models": resp.max_loaded_models,
                "max_queue": resp.max_queue,
                "num_parallel": resp.num_parallel,
            },
            "queued_requests": resp.queued_requests,
        }
    )
