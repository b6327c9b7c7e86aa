"""The one place where service errors become HTTP responses in Ollama's shape.

Every error body is `{"error": "<message>"}` plus a stable machine-readable
`code` (the ErrorReason name, lower-cased) that Ollama lacks.
"""

from __future__ import annotations

import json
import logging

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError, from_rpc_error
from corral.logs import fields
from corral.v1 import common_pb2

log = logging.getLogger(__name__)

_HTTP_BY_REASON: dict[int, int] = {
    common_pb2.ERROR_REASON_MODEL_NOT_FOUND: 404,
    common_pb2.ERROR_REASON_BLOB_NOT_FOUND: 404,
    common_pb2.ERROR_REASON_QUEUE_FULL: 503,
    common_pb2.ERROR_REASON_NO_RUNNER: 503,
    common_pb2.ERROR_REASON_LOAD_FAILED: 500,
    common_pb2.ERROR_REASON_RUNNER_FAILED: 500,
    common_pb2.ERROR_REASON_NO_SPACE: 500,  # Ollama: 500 "write <path>: no space left on device"
    common_pb2.ERROR_REASON_DIGEST_MISMATCH: 400,
}
_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check corral server logs for details"
)


class HTTPError(Exception):
    """An error that already has its HTTP status and Ollama message."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def body(self) -> dict[str, str]:
        out = {"error": self.message}
        if self.code:
            out["code"] = self.code
        return out


def bad_request(message: str, code: str = "invalid_request") -> HTTPError:
    return HTTPError(400, message, code)


def model_not_found(name: str) -> HTTPError:
    return HTTPError(404, f"model '{name}' not found", "model_not_found")


def from_corral(err: CorralError, model: str = "") -> HTTPError:
    if err.reason == common_pb2.ERROR_REASON_MODEL_NOT_FOUND and model:
        return model_not_found(model)
    status = _HTTP_BY_REASON.get(err.reason) or _HTTP_BY_CODE.get(err.code, 500)
    message = err.message
    if err.reason == common_pb2.ERROR_REASON_RUNNER_FAILED:
        message = RUNNER_STOPPED
    code = err.reason_name.lower() if err.reason else err.code.name.lower()
    return HTTPError(status, message, code)


def from_rpc(err: grpc.RpcError, model: str = "") -> HTTPError:
    return from_corral(from_rpc_error(err), model)


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def openai_body(err: HTTPError) -> dict[str, object]:
    """OpenAI's envelope; `code` carries Corral's machine-readable code."""
    kind = _OPENAI_TYPES.get(err.status, "invalid_request_error" if 400 <= err.status < 500 else "api_error")
    return {"error": {"message": err.message, "type": kind, "param": None, "code": err.code or None}}


def anthropic_body(err: HTTPError, request_id: str = "") -> dict[str, object]:
    kind = _ANTHROPIC_TYPES.get(err.status, "invalid_request_error" if 400 <= err.status < 500 else "api_error")
    body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": err.message}}
    if request_id:
        body["request_id"] = request_id
    return body


def surface_body(path: str, err: HTTPError) -> dict[str, object]:
    """The error shape of the API surface `path` belongs to."""
    if path.startswith("/v1/messages"):
        return anthropic_body(err)
    if path.startswith("/v1/"):
        return openai_body(err)
    return dict(err.body())


class UnexpectedErrors:
    """Pure ASGI middleware: an exception no handler knows (a bug) becomes a 500 in the
    surface's error shape, logged with its traceback. Left to Starlette, the client gets a
    plain-text 500 and uvicorn then closes the connection under it, so the client's next
    request on that keep-alive connection fails too. Once a response has started there is
    nothing to answer: the exception goes on, and the connection closes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            log.exception("unexpected error", extra=fields(path=scope.get("path", "")))
            err = HTTPError(500, f"internal error: {type(exc).__name__}", "internal")
            body = json.dumps(surface_body(scope.get("path", ""), err)).encode()
            headers = [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
