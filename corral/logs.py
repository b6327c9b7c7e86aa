"""Logging shared by every service: JSON lines or readable text, Ollama's debug levels,
optional size-based rotation, and the request id of the request being served on every line."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path

TRACE = 5  # CORRAL_DEBUG=2, below DEBUG as OLLAMA_DEBUG=2 is
logging.addLevelName(TRACE, "TRACE")

# The id of the request this task is serving: set by the gateway's middleware and by the gRPC
# server interceptor from the caller's `x-request-id` metadata (corral/telemetry.py).
REQUEST_ID: ContextVar[str] = ContextVar("corral_request_id", default="")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _extra(record: logging.LogRecord) -> dict[str, object]:
    extra = getattr(record, "fields", None)
    return extra if isinstance(extra, dict) else {}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", ""):
            entry["request_id"] = request_id
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL service logger: msg key=value … request_id=…`, for a person at a terminal."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        pairs = dict(_extra(record))
        if request_id := getattr(record, "request_id", ""):
            pairs["request_id"] = request_id
        tail = "".join(f" {k}={v}" for k, v in pairs.items())
        line = f"{_timestamp(record)} {record.levelname:<5} {self.service} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def level(debug: str) -> int:
    """CORRAL_DEBUG / OLLAMA_DEBUG: empty or false = INFO, true or 1 = DEBUG, 2 or more = TRACE."""
    value = debug.strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return logging.INFO
    if value.isdigit() and int(value) >= 2:
        return TRACE
    return logging.DEBUG


def formatter(service: str, fmt: str, stream: object) -> logging.Formatter:
    """CORRAL_LOG_FORMAT: json, text, or empty = text on a terminal and JSON otherwise."""
    if fmt not in {"", "json", "text"}:
        raise ValueError(f"CORRAL_LOG_FORMAT must be json or text, got {fmt!r}")
    isatty = getattr(stream, "isatty", None)
    use_text = fmt == "text" or (fmt == "" and callable(isatty) and bool(isatty()))
    return TextFormatter(service) if use_text else JsonFormatter(service)


def service_log_path(path: str, service: str) -> Path:
    """Each process rotates its own file (rotation is not safe across processes):
    `corral.log` becomes `corral-gateway.log`; a `{service}` in the path is replaced instead."""
    if "{service}" in path:
        return Path(path.replace("{service}", service)).expanduser()
    p = Path(path).expanduser()
    return p.with_name(f"{p.stem}-{service}{p.suffix}")


def setup(service: str, env: Mapping[str, str] | None = None) -> None:
    """Route all logging to stderr (and CORRAL_LOG_FILE, rotated by size when asked), tagged
    with the service name and the request id."""
    from corral.config import raw

    source = dict(env) if env is not None else None
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, raw("CORRAL_LOG_FORMAT", source), sys.stderr))
    handlers = [handler]
    if path := raw("CORRAL_LOG_FILE", source):
        file = service_log_path(path, service)
        file.parent.mkdir(parents=True, exist_ok=True)
        max_bytes = int(raw("CORRAL_LOG_MAX_BYTES", source))
        rotating = logging.handlers.RotatingFileHandler(
            file,
            maxBytes=max_bytes,
            backupCount=int(raw("CORRAL_LOG_BACKUPS", source)) if max_bytes else 0,
            encoding="utf-8",
        )
        rotating.setFormatter(JsonFormatter(service))  # files are for machines
        handlers.append(rotating)
    for h in handlers:
        h.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level(raw("CORRAL_DEBUG", source)))
    for noisy in ("uvicorn.access", "httpx", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fields(**kwargs: object) -> dict[str, object]:
    """`log.info("msg", extra=fields(model=...))` adds structured fields to the line."""
    return {"fields": kwargs}
