"""llama.cpp's log, routed to Python logging and captured per thread.

The load path reads two things from the log: llama.cpp's reason when a load
fails (the C API only returns NULL), and the buffer sizes it allocated, which
is what llama-server and Ollama report as memory use too.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import llama_cpp as lc

log = logging.getLogger("llama.cpp")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_LEVEL_WARN = 3
_LEVEL_ERROR = 4
_LEVEL_CONT = 5
_captures: dict[int, list[tuple[int, str]]] = {}
_installed = False
_install_lock = threading.Lock()


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _on_log(level: int, text: bytes | None, _user: ctypes.c_void_p) -> None:
    msg = text.decode("utf-8", "replace") if text else ""
    buf = _captures.get(threading.get_ident())
    if buf is not None:
        if level == _LEVEL_CONT and buf:
            buf[-1] = (buf[-1][0], buf[-1][1] + msg)
        else:
            buf.append((level, msg))
    if level == _LEVEL_ERROR:
        log.warning("%s", msg.rstrip())
    elif level == _LEVEL_WARN:
        log.info("%s", msg.rstrip())
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("%s", msg.rstrip())


def install() -> None:
    """Replaces llama-cpp-python's stderr printer with ours (once per process)."""
    global _installed
    with _install_lock:
        if not _installed:
            lc.llama_log_set(_on_log, ctypes.c_void_p(0))
            _installed = True


@contextmanager
def capture() -> Iterator[list[tuple[int, str]]]:
    """Collects (level, text) of llama.cpp log lines emitted on this thread."""
    install()
    key = threading.get_ident()
    outer = _captures.get(key)
    buf: list[tuple[int, str]] = []
    _captures[key] = buf
    try:
        yield buf
    finally:
        if outer is None:
            _captures.pop(key, None)
        else:  # nested: the outer capture sees these lines too
            outer.extend(buf)
            _captures[key] = outer


def errors(lines: list[tuple[int, str]]) -> str:
    """llama.cpp's error lines joined, for a LOAD_FAILED message."""
    errs = [t.strip() for lvl, t in lines if lvl == _LEVEL_ERROR and t.strip()]
    return "; ".join(errs[-3:])


@dataclass
class BufferSizes:
    weights: int = 0
    kv: int = 0
    compute: int = 0
    gpu: int = 0
    found: bool = False
    # GPU part by llama.cpp buffer name ("CUDA0", "CUDA1", ...); sums to `gpu`.
    gpu_by_buffer: dict[str, int] = field(default_factory=dict)


_BUFFER_RE = re.compile(r"(\S+)\s+(model|KV|RS|compute|output|LoRA) buffer size =\s*([\d.]+) MiB")


def _in_host_ram(buf_name: str) -> bool:
    """True for buffers in host RAM: CPU, CPU_Mapped, CPU_REPACK, CUDA_Host (pinned host memory)."""
    return buf_name.startswith("CPU") or buf_name.endswith("_Host")


def buffer_sizes(lines: list[tuple[int, str]]) -> BufferSizes:
    """Sums the `<buffer> <kind> buffer size = N MiB` lines llama.cpp logs at load."""
    out = BufferSizes()
    for _lvl, text in lines:
        for m in _BUFFER_RE.finditer(text):
            buf_name, kind, mib = m.group(1), m.group(2), float(m.group(3))
            size = int(mib * 1024 * 1024)
            out.found = True
            if kind in ("model", "LoRA"):
                out.weights += size
            elif kind in ("KV", "RS"):
                out.kv += size
            else:
                out.compute += size
            if not _in_host_ram(buf_name):
                out.gpu += size
                out.gpu_by_buffer[buf_name] = out.gpu_by_buffer.get(buf_name, 0) + size
    return out


_CUDA_BUFFER_RE = re.compile(r"CUDA(\d+)")


def cuda_ordinal(buf_name: str) -> int | None:
    """k of a "CUDAk" buffer name; None for any other name."""
    m = _CUDA_BUFFER_RE.fullmatch(buf_name)
    return int(m.group(1)) if m else None
