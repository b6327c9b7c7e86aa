"""Event delivery from the owner thread: one hand-over per step, and merging for a
consumer that fell behind. Pure asyncio and threads; the engine test with llama.cpp is in
test_engine.py (test_a_consumer_that_falls_behind_gets_merged_events)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import delivery
from services.runner.delivery import EventBuffer, Outbox, merge
from services.runner.jobs import GenEvent, GenStats
from services.runner.logprobs import PositionLogprobs, TokenLogprob

STATS = GenStats(3, 10, 4, 20, 0)


def lp(token: int) -> PositionLogprobs:
    return PositionLogprobs(TokenLogprob(token, "x", -0.5, b"x"), ())


async def event(buf: EventBuffer) -> GenEvent:
    item = await asyncio.wait_for(buf.get(), 5)
    assert isinstance(item, GenEvent)
    return item


def test_merge_keeps_order_and_takes_the_end_of_the_last() -> None:
    events = [
        GenEvent("He", [1], logprobs=[lp(1)]),
        GenEvent("llo", [2, 3], logprobs=[lp(2), lp(3)]),
        GenEvent("!", [4], True, common_pb2.DONE_REASON_STOP, STATS, [lp(4)]),
    ]
    m = merge(events)
    assert (m.text, m.token_ids, m.done, m.done_reason, m.stats) == (
        "Hello!",
        [1, 2, 3, 4],
        True,
        common_pb2.DONE_REASON_STOP,
        STATS,
    )
    assert [p.sampled.token_id for p in m.logprobs] == [1, 2, 3, 4]
    assert merge(events[:1]) is events[0]


async def test_a_buffer_merges_what_is_pending_and_keeps_an_error_apart() -> None:
    buf = EventBuffer()
    buf.put(GenEvent("a", [1]))
    assert (await event(buf)).token_ids == [1]  # a consumer that keeps up gets each event
    for i in range(2, 5):
        buf.put(GenEvent(str(i), [i]))
    err = CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, "gone")
    buf.put(err)
    merged = await event(buf)
    assert (merged.text, merged.token_ids, merged.done) == ("234", [2, 3, 4], False)
    assert await buf.get() is err


async def test_a_buffer_stops_merging_at_the_last_event() -> None:
    buf = EventBuffer()
    buf.put(GenEvent("x", [1]))
    buf.put(GenEvent("y", [2], True, common_pb2.DONE_REASON_LENGTH, STATS))
    last = await event(buf)
    assert (last.text, last.done, last.stats) == ("xy", True, STATS)


async def test_a_waiting_consumer_wakes_on_the_first_event() -> None:
    buf = EventBuffer()
    waiter = asyncio.create_task(buf.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    buf.put(GenEvent("t", [7]))
    got = await asyncio.wait_for(waiter, 5)
    assert isinstance(got, GenEvent) and got.token_ids == [7]


async def test_the_owner_threads_events_arrive_at_flush_in_one_hand_over() -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox()
    buffers = [EventBuffer(), EventBuffer()]
    emits = [outbox.emitter(loop, b) for b in buffers]
    handovers = 0
    real = loop.call_soon_threadsafe

    def counting(callback: Callable[..., object], *args: object, **kwargs: Any) -> asyncio.Handle:
        nonlocal handovers
        handovers += callback is delivery._deliver  # not the to_thread calls below
        return real(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        emitted, flush = threading.Event(), threading.Event()

        def owner() -> None:
            outbox.bind()
            for step in range(3):
                for i, emit in enumerate(emits):
                    emit(GenEvent(f"{i}{step}", [step]))
            emitted.set()
            flush.wait(5)
            outbox.flush()

        thread = threading.Thread(target=owner)
        thread.start()
        assert await asyncio.to_thread(emitted.wait, 5)
        await asyncio.sleep(0.05)
        assert handovers == 0  # nothing leaves before the owner flushes
        flush.set()
        await asyncio.to_thread(thread.join)
        texts = [(await event(b)).text for b in buffers]
    finally:
        del loop.call_soon_threadsafe
    assert handovers == 1
    assert texts == ["000102", "101112"]  # each request's three steps, merged, in order


async def test_events_from_another_thread_go_at_once() -> None:
    outbox = Outbox()
    buf = EventBuffer()
    emit = outbox.emitter(asyncio.get_running_loop(), buf)
    err = CorralError(common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND, "not loaded")
    emit(err)  # this thread is not the owner (none is bound yet)
    assert await asyncio.wait_for(buf.get(), 5) is err
