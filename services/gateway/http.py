"""Request parsing and response helpers shared by every API surface."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from services.gateway.errors import HTTPError, bad_request

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class JsonModel(BaseModel):
    """A request body of the OpenAI and Anthropic surfaces, typed as their APIs type it: JSON
    types only (no "2" for 2, no true for 1), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


NDJSON = "application/x-ndjson"


def now_rfc3339() -> str:
    """RFC 3339 with nanosecond-style precision in UTC, as Go's time.RFC3339Nano."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def parse_json(request: Request) -> dict[str, Any]:
    """Decode a JSON object body with Ollama's 400 messages."""
    raw = await request.body()
    if not raw.strip():
        raise bad_request("missing request body", "missing_body")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad_request(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "invalid_json") from exc
    except UnicodeDecodeError as exc:
        raise bad_request("invalid JSON: the body is not UTF-8 text", "invalid_json") from exc
    if not isinstance(data, dict):
        raise bad_request(f"json: cannot unmarshal {type(data).__name__} into request object", "invalid_json")
    return data


async def parse_body(request: Request, model: type[M]) -> M:
    """Decode a JSON body into `model` with Ollama's 400 messages."""
    return validated(model, await parse_json(request))


def validated(model: type[M], data: Any) -> M:
    """`data` as `model`; a wrong field is a 400 naming it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise bad_request(f"invalid value for field '{where}': {err['msg']}", "invalid_field") from exc


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json; charset=utf-8")


def error_response(err: HTTPError, body: Callable[[HTTPError], dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(body(err) if body else err.body(), status_code=err.status)


async def ndjson_stream(chunks: AsyncGenerator[dict[str, Any], None]) -> Response:
    """Stream NDJSON. An error before the first chunk gets its real status; after it, a final
    `{"error": ...}` line (Ollama's rule). Cancelling the response closes `chunks`, which
    cancels the upstream gRPC call."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return Response(b"", media_type=NDJSON)
    except HTTPError as err:
        return error_response(err)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield dumps(first) + b"\n"
            async for chunk in chunks:
                yield dumps(chunk) + b"\n"
        except HTTPError as err:
            yield dumps(err.body()) + b"\n"
        finally:
            await chunks.aclose()

    return StreamingResponse(body(), media_type=NDJSON, headers={"X-Accel-Buffering": "no"})


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(
    request: Request,
    chunks: AsyncGenerator[dict[str, Any], None],
    merge: Callable[[list[dict[str, Any]]], dict[str, Any]],
    error_body: Callable[[HTTPError], dict[str, Any]] | None = None,
) -> Response:
    """Non-streaming reply: run the stream to the end and merge its chunks into one object.

    Unlike streams, plain handlers are not cancelled when the client leaves, so race the
    work against the disconnect and cancel the upstream call ourselves."""

    async def run() -> Response:
        items: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                items.append(chunk)
        except HTTPError as err:
            return error_response(err, error_body)
        finally:
            await chunks.aclose()
        if not items:
            return error_response(HTTPError(500, "no response from the model", "empty_response"), error_body)
        return json_response(merge(items))

    work = asyncio.ensure_future(run())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work  # let it cancel the runner call and release the lease
    if work.cancelled():
        return error_response(HTTPError(499, "request canceled", "canceled"), error_body)
    return work.result()
