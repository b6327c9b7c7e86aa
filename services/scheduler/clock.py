"""The scheduler's time: keep-alive timers, expiry stamps, idle and heartbeat ages.

Injected so tests can move time by hand (`ManualClock.advance`) instead of sleeping.
Waits that pair with real I/O (the load timeout, the heartbeat loop) stay on real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (what `expires_at` reports)."""
        ...

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, fn, *args)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time that moves only when told; due timers run inside `advance`, in order."""

    def __init__(self, start: float = 1000.0, epoch: float = 1_700_000_000.0) -> None:
        self.now = start
        self._epoch = epoch - start
        self._timers: list[tuple[float, int, _ManualTimer, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self._epoch + self.now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = _ManualTimer()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._seq), timer, fn, args))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer, fn, args = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                fn(*args)
        self.now = until
