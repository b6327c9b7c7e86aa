"""Traces and request ids across the four services.

OpenTelemetry is configured from the standard `OTEL_*` variables, but nothing is exported
unless asked: `OTEL_TRACES_EXPORTER=otlp|console` or an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`.
W3C `traceparent` and Corral's `x-request-id` travel in gRPC metadata: the client interceptor
on every channel (corral/grpc_server.py) writes them, the server interceptor reads them back,
so one request is one trace and its id is on every log line of every service that served it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from corral.logs import REQUEST_ID

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_TRACE_KEYS = ("traceparent", "tracestate")


def exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters asked for: OTEL_TRACES_EXPORTER, else otlp when an OTLP endpoint is set."""
    source = os.environ if env is None else env
    names = [n.strip() for n in source.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (source.get("OTEL_EXPORTER_OTLP_ENDPOINT") or source.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def setup_tracing(service: str) -> bool:
    """Install the SDK's tracer provider when an exporter is asked for; True if it was."""
    names = exporters()
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"service.name": f"corral-{service}", "service.namespace": "corral"})
    provider = TracerProvider(resource=resource)  # flushes at interpreter exit
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (otlp, console, none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"fields": {"exporters": names}})
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer("corral")


def outgoing(metadata: list[tuple[str, str]]) -> None:
    """Adds the current trace context and request id to a call's metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata.extend(carrier.items())
    if request_id := REQUEST_ID.get():
        metadata.append((REQUEST_ID_KEY, request_id))


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    extra: list[tuple[str, str]] = []
    outgoing(extra)
    if not extra:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in extra:
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# One class per call type: a channel files an interceptor under the first type it matches only.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_context(client_call_details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_context(client_call_details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_context(client_call_details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For every channel to another Corral service: calls carry the trace context and request id."""
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary()]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Makes the caller's request id current and, for calls that are part of a trace, opens a
    server span named after the method. Calls without either (heartbeats, health) pass as they are."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}  # type: ignore[attr-defined]
        request_id = metadata.get(REQUEST_ID_KEY, "")
        traced = any(k in metadata for k in _TRACE_KEYS)
        if handler is None or not (request_id or traced):
            return handler
        parent = propagate.extract(metadata) if traced else None
        method: str = handler_call_details.method  # type: ignore[attr-defined]

        def enter() -> tuple[Any, Any]:
            token = REQUEST_ID.set(request_id)
            if parent is None:
                return token, None
            span = tracer().start_span(method.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER)
            if request_id:
                span.set_attribute("corral.request_id", request_id)
            return token, (span, otel_context.attach(trace.set_span_in_context(span)))

        def leave(state: tuple[Any, Any], exc: BaseException | None) -> None:
            token, opened = state
            if opened is not None:
                span, ctx_token = opened
                if exc is not None and not isinstance(exc, GeneratorExit):
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                otel_context.detach(ctx_token)
                span.end()
            with contextlib.suppress(ValueError):  # a stream closed from another context
                REQUEST_ID.reset(token)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                state = enter()
                try:
                    result = await inner_uu(request, context)
                except BaseException as exc:
                    leave(state, exc)
                    raise
                leave(state, None)
                return result

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                state = enter()
                try:
                    async for item in inner_us(request, context):
                        yield item
                except BaseException as exc:
                    leave(state, exc)
                    raise
                leave(state, None)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
