"""What the gateway tells operators: `GET /metrics`, and the middleware that gives every HTTP
request its metrics, its trace span and its request id (`X-Request-Id`, the client's if sent)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from corral.logs import REQUEST_ID
from corral.telemetry import tracer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Token gaps of a local model: a few ms (GPU) to a few hundred (CPU, long prompts admitted).
_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("corral_gateway_requests", "HTTP requests answered, by route, method and status.",
                   ["route", "method", "status"])  # fmt: skip
REQUEST_SECONDS = Histogram(
    "corral_gateway_request_duration_seconds", "Time from request to the end of the response body.", ["route"]
)
IN_FLIGHT = Gauge("corral_gateway_requests_in_flight", "HTTP requests being answered.")
TTFT = Histogram(
    "corral_gateway_time_to_first_token_seconds",
    "From the start of a generation (lease included) to its first token.",
    ["model"],
    buckets=_TTFT_BUCKETS,
)
TOKEN_GAP = Histogram(
    "corral_gateway_inter_token_seconds", "Gap between consecutive streamed chunks.", ["model"], buckets=_GAP_BUCKETS
)
PROMPT_TOKENS = Counter("corral_gateway_prompt_tokens", "Prompt tokens evaluated (prompt_eval_count).", ["model"])
CACHED_TOKENS = Counter("corral_gateway_prompt_cached_tokens", "Prompt tokens served from the KV cache.", ["model"])
GENERATED_TOKENS = Counter("corral_gateway_generated_tokens", "Tokens generated (eval_count).", ["model"])

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

router = APIRouter()


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class GenerationTimer:
    """TTFT, inter-token gaps and token counts of one generation, observed as chunks pass."""

    __slots__ = ("_gap", "_last", "_start", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._start = self._last = time.perf_counter()
        self._gap = TOKEN_GAP.labels(model)

    def chunk(self, has_text: bool) -> None:
        if not has_text:  # the final stats chunk is no token
            return
        now = time.perf_counter()
        if self._last == self._start:
            TTFT.labels(self.model).observe(now - self._start)
        else:
            self._gap.observe(now - self._last)
        self._last = now

    def done(self, prompt_eval: int, cached: int, generated: int) -> None:
        PROMPT_TOKENS.labels(self.model).inc(prompt_eval)
        CACHED_TOKENS.labels(self.model).inc(cached)
        GENERATED_TOKENS.labels(self.model).inc(generated)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _SAFE_ID.match(candidate):  # it lands in logs and metadata: no control characters
                return candidate
    return uuid.uuid4().hex


class Observe:
    """Pure ASGI middleware (streams pass through untouched): counts and times each request by
    its route template, opens the request's server span (honouring a client's `traceparent`) and
    makes its request id current for the logs and the gRPC calls it makes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        request_id = _request_id(headers)
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        method = scope.get("method", "GET")
        status = 500
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        token = REQUEST_ID.set(request_id)
        IN_FLIGHT.inc()
        started = time.perf_counter()
        span = tracer().start_span(
            f"{method} {scope.get('path', '')}", context=propagate.extract(carrier), kind=trace.SpanKind.SERVER
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # bounded label values
            span.update_name(f"{method} {route}")
            span.set_attribute("http.request.method", method)
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("corral.request_id", request_id)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            span.end()
            REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            IN_FLIGHT.dec()
            REQUEST_ID.reset(token)
