"""Events from an instance's owner thread to the requests' consumers on the event loop.

Two costs are kept off the per-token path:
- The owner thread collects a step's events in an `Outbox` and hands them to each event
  loop in one `call_soon_threadsafe`: one wake-up of the loop per step, not one per token
  and sequence (each wake-up is a syscall and takes a core from llama.cpp's threads).
- A consumer that fell behind (a slow client, a busy loop) finds several events in its
  `EventBuffer`; it gets them merged into one, so its stream sends one message, not one
  per token. A consumer that keeps up gets every token on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from corral.errors import CorralError
from services.runner.jobs import Emit, GenEvent

Item = GenEvent | CorralError


def merge(events: list[GenEvent]) -> GenEvent:
    """One event with the text, tokens and logprobs of `events` in order; the last one's end."""
    if len(events) == 1:
        return events[0]
    last = events[-1]
    return GenEvent(
        text="".join(e.text for e in events),
        token_ids=[t for e in events for t in e.token_ids],
        done=last.done,
        done_reason=last.done_reason,
        stats=last.stats,
        logprobs=[p for e in events for p in e.logprobs],
    )


class EventBuffer:
    """One request's undelivered events, on its event loop."""

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Item:
        """The next event, merged with the events queued behind it up to the last one; an
        error comes on its own, after the events before it."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        first = self._items.popleft()
        if isinstance(first, CorralError) or first.done or not self._items:
            return first
        events = [first]
        while self._items and not events[-1].done:
            nxt = self._items[0]
            if not isinstance(nxt, GenEvent):
                break
            self._items.popleft()
            events.append(nxt)
        return merge(events)


def _deliver(items: list[tuple[EventBuffer, Item]]) -> None:
    for buffer, item in items:
        buffer.put(item)


def _send(loop: asyncio.AbstractEventLoop, items: list[tuple[EventBuffer, Item]]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
        loop.call_soon_threadsafe(_deliver, items)


class Outbox:
    """The owner thread's events of the current step. Events emitted on another thread (a
    request refused after the instance closed) are sent at once."""

    def __init__(self) -> None:
        self._owner: int | None = None
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[EventBuffer, Item]]] = {}

    def bind(self) -> None:
        """Called on the owner thread before it emits anything."""
        self._owner = threading.get_ident()

    def emitter(self, loop: asyncio.AbstractEventLoop, buffer: EventBuffer) -> Emit:
        def emit(item: Item) -> None:
            if threading.get_ident() == self._owner:
                self._pending.setdefault(loop, []).append((buffer, item))
            else:
                _send(loop, [(buffer, item)])

        return emit

    def flush(self) -> None:
        """On the owner thread, after each step and before it blocks: sends what was emitted."""
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            _send(loop, items)
