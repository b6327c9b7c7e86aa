"""Time and memory bounds every fuzzed call must keep."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MAX_PEAK_BYTES = 64 << 20


@contextmanager
def bounded(seconds: float, peak: int = MAX_PEAK_BYTES) -> Iterator[None]:
    """The block allocates at most `peak` bytes of Python memory and ends within `seconds`."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - t0
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert top < peak, f"peak {top} bytes"
        assert took < seconds, f"took {took:.1f} s"


def outcome(fn: Callable[[], Any], allowed: tuple[type[BaseException], ...]) -> Any:
    """fn()'s result, or the allowed exception it raised; anything else fails the test."""
    try:
        return fn()
    except allowed as exc:
        return exc
