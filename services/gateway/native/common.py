"""Pieces shared by the native endpoints: keep_alive, final-chunk metrics."""

from __future__ import annotations

import time
from typing import Any

from corral.durations import parse_keep_alive
from corral.v1 import common_pb2, runner_pb2
from services.gateway.errors import bad_request

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
