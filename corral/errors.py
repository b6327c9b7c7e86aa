"""Errors that cross service boundaries.

A service raises `CorralError(reason, message)`; `corral.grpc_server` turns it
into a gRPC status with a google.rpc.ErrorInfo detail carrying the stable
reason. Clients call `from_rpc_error` to get the same CorralError back, and the
gateway maps it to HTTP once (services/gateway/errors.py).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from corral.v1 import common_pb2

DOMAIN = "corral.dev"

# The gRPC code each reason travels with.
_CODES: dict[int, grpc.StatusCode] = {
    common_pb2.ERROR_REASON_MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_REASON_INVALID_MODEL_NAME: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_INVALID_DIGEST: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_DIGEST_MISMATCH: grpc.StatusCode.DATA_LOSS,
    common_pb2.ERROR_REASON_BLOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_REASON_INVALID_GGUF: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    common_pb2.ERROR_REASON_NO_RUNNER: grpc.StatusCode.UNAVAILABLE,
    common_pb2.ERROR_REASON_LOAD_FAILED: grpc.StatusCode.INTERNAL,
    common_pb2.ERROR_REASON_RUNNER_FAILED: grpc.StatusCode.UNAVAILABLE,
    common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_REASON_PROMPT_TOO_LONG: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_INVALID_PATH: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_REASON_UNSUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    common_pb2.ERROR_REASON_NO_SPACE: grpc.StatusCode.INTERNAL,
}

_PREFIX = "ERROR_REASON_"


def reason_name(reason: int) -> str:
    """ "MODEL_NOT_FOUND" for ERROR_REASON_MODEL_NOT_FOUND."""
    return common_pb2.ErrorReason.Name(reason).removeprefix(_PREFIX)  # type: ignore[arg-type]


class CorralError(Exception):
    """An error with a stable reason (common_pb2.ErrorReason) and a user-facing message."""

    def __init__(self, reason: int, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code or _CODES.get(reason, grpc.StatusCode.INTERNAL)

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason_name, domain=DOMAIN)
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        status.details.add().Pack(info)
        return rpc_status.to_status(status)

    def __repr__(self) -> str:
        return f"CorralError({self.reason_name}, {self.message!r})"


def from_rpc_error(err: grpc.RpcError) -> CorralError:
    """Rebuild the CorralError a service raised; other failures keep their gRPC code."""
    code: grpc.StatusCode = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message: str = (err.details() if hasattr(err, "details") else None) or str(code)
    reason: int = common_pb2.ERROR_REASON_UNSPECIFIED
    status = None
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:  # trailers absent or unparsable: keep the plain code
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == DOMAIN:
                try:
                    reason = common_pb2.ErrorReason.Value(_PREFIX + info.reason)
                except ValueError:
                    reason = common_pb2.ERROR_REASON_UNSPECIFIED
    return CorralError(reason, message, code)


__all__ = ["DOMAIN", "CorralError", "from_rpc_error", "reason_name"]
