"""GET / and /api/version."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from services.gateway.http import json_response

router = APIRouter()

# Clients (Open WebUI, the ollama CLI) compare this with Ollama's releases; report a
# version whose API surface Corral implements.
OLLAMA_COMPAT_VERSION = "0.12.0"


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    return json_response({"version": OLLAMA_COMPAT_VERSION})
