"""Pieces shared by the native endpoints: keep_alive, final-chunk metrics, progress streams."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from fastapi.responses import Response

from corral.durations import parse_keep_alive
from corral.v1 import common_pb2, registry_pb2, runner_pb2
from services.gateway import errors
from services.gateway.errors import bad_request
from services.gateway.http import json_response, ndjson_stream

DONE_REASONS = {
    common_pb2.DONE_REASON_STOP: "stop",
    common_pb2.DONE_REASON_LENGTH: "length",
    common_pb2.DONE_REASON_CANCELLED: "stop",
    common_pb2.DONE_REASON_UNSPECIFIED: "stop",
}


def keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise bad_request(str(exc), "invalid_keep_alive") from exc


def metrics(final: runner_pb2.GenerateResponse, started_ns: int, load_ns: int) -> dict[str, Any]:
    """Ollama's final-chunk fields; zero counts are omitted as Go's omitempty does."""
    s = final.stats
    out: dict[str, Any] = {
        "done_reason": DONE_REASONS.get(final.done_reason, "stop"),
        "total_duration": time.monotonic_ns() - started_ns,
        "load_duration": load_ns,
        "prompt_eval_count": s.prompt_eval_count,
        "prompt_eval_duration": s.prompt_eval_duration_ns,
        "eval_count": s.eval_count,
        "eval_duration": s.eval_duration_ns,
    }
    return {k: v for k, v in out.items() if v or k == "done_reason"}


def progress_json(event: registry_pb2.CreateModelResponse | registry_pb2.TransferProgress) -> dict[str, Any]:
    """Ollama's progress line: status, and digest/total/completed when they apply."""
    out: dict[str, Any] = {"status": event.status}
    if event.digest:
        out["digest"] = event.digest
    if event.total:
        out["total"] = event.total
        if event.completed:  # Ollama's first event of a layer has no `completed`
            out["completed"] = event.completed
    return out


async def progress_reply(call: grpc.aio.UnaryStreamCall[Any, Any], stream: bool) -> Response:
    """A registry progress stream (create, pull, push) as NDJSON, or its last event when not streaming."""

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for event in call:
                yield progress_json(event)
        except grpc.RpcError as err:
            raise errors.from_rpc(err) from err
        finally:
            call.cancel()

    if stream:
        return await ndjson_stream(events())
    last: dict[str, Any] = {}
    try:
        async for event in events():
            last = event
    except errors.HTTPError as err:
        return json_response(err.body(), err.status)
    return json_response(last)
