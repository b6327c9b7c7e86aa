"""The gateway's ASGI app: Ollama's REST API over the Corral gRPC services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import CorralError
from services.gateway import ui
from services.gateway.anthropic import count_tokens as anthropic_count
from services.gateway.anthropic import messages as anthropic_messages
from services.gateway.backends import Backends
from services.gateway.errors import HTTPError, UnexpectedErrors, from_corral, surface_body
from services.gateway.native import chat, embed, generate, manage, meta, models, running, tokenize
from services.gateway.observability import Observe
from services.gateway.observability import router as metrics_router
from services.gateway.openai import chat as openai_chat
from services.gateway.openai import completions as openai_completions
from services.gateway.openai import embeddings as openai_embeddings
from services.gateway.openai import models as openai_models
from services.gateway.openai import responses as openai_responses
from services.gateway.rerank import router as rerank_router


def create_app(backends: Backends) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await backends.close()

    # FastAPI's own OpenTelemetry spans and metrics are off: observability.Observe makes the one
    # request span (named by route, like the other services' spans) and the Prometheus metrics.
    telemetry: Any = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(
        title="Corral", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan, telemetry=telemetry
    )
    app.state.backends = backends
    app.add_middleware(UnexpectedErrors)  # inside Observe, which then counts its 500s
    app.add_middleware(Observe)
    app.include_router(metrics_router)
    for module in (meta, generate, models, manage, running, chat, embed, tokenize):
        app.include_router(module.router)
    for module in (
        openai_chat,
        openai_completions,
        openai_embeddings,
        openai_models,
        openai_responses,
        anthropic_messages,
        anthropic_count,
    ):
        app.include_router(module.router)
    app.include_router(rerank_router)
    app.include_router(ui.router)
    app.mount(ui.PREFIX, ui.static_files(), name="ui")

    def error_response(request: Request, err: HTTPError) -> Response:
        # /v1 surfaces answer in OpenAI's or Anthropic's error shape
        return JSONResponse(surface_body(request.url.path, err), status_code=err.status)

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(CorralError)
    async def on_corral_error(request: Request, exc: CorralError) -> Response:
        return error_response(request, from_corral(exc))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        msg = str(exc.errors()[0].get("msg", "invalid request"))
        return error_response(request, HTTPError(400, msg, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette(request: Request, exc: StarletteHTTPException) -> Response:
        # Go's router answers unknown paths and methods in plain text.
        if exc.status_code == 404 and request.url.path.startswith("/v1/"):
            return error_response(request, HTTPError(404, f"unknown endpoint {request.url.path}", "not_found"))
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse("405 method not allowed", status_code=405)
        return error_response(request, HTTPError(exc.status_code, str(exc.detail)))

    return app
