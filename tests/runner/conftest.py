"""Helpers shared by the runner tests: a fake device probe and stream collection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from services.runner.devices import DeviceInfo
from services.runner.engine import GenerationStream
from services.runner.jobs import GenEvent

# Gemma 3 chat turn; special tokens are parsed because the runner tokenizes with parse_special.
PROMPT = "<start_of_turn>user\nWrite a short poem about the sea.<end_of_turn>\n<start_of_turn>model\n"


class FakeProbe:
    """A CPU device whose figures the test controls."""

    def __init__(self, free: int = 6 << 30) -> None:
        self.free = free
        self.closed = False

    def probe(self) -> list[DeviceInfo]:
        return [DeviceInfo("fake:0", "cpu", 0, "Fake CPU", 8 << 30, self.free, "testhost")]

    def close(self) -> None:
        self.closed = True


@dataclass
class Result:
    events: list[GenEvent] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)

    @property
    def last(self) -> GenEvent:
        return self.events[-1]

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]


async def collect(stream: GenerationStream) -> Result:
    out = Result()
    async for ev in stream:
        out.events.append(ev)
    return out


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls cond until it holds (counters are published between decode steps)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
def fake_probe() -> FakeProbe:
    return FakeProbe()
