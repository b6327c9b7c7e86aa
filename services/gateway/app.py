"""The gateway's ASGI app: Ollama's REST API over the Corral gRPC services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.backends import Backends
from services.gateway.errors import HTTPError
from services.gateway.http import error_response
from services.gateway.native import generate, manage, meta, models, running


def create_app(backends: Backends) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await backends.close()

    app = FastAPI(title="Corral", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.backends = backends
    for module in (meta, generate, models, manage, running):
        app.include_router(module.router)

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(HTTPError(400, str(exc.errors()[0].get("msg", "invalid request")), "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette(request: Request, exc: StarletteHTTPException) -> Response:
        # Go's router answers unknown paths and methods in plain text.
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse("405 method not allowed", status_code=405)
        return error_response(HTTPError(exc.status_code, str(exc.detail)))

    return app
