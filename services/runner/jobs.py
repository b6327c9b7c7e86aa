"""What flows between the asyncio side and an instance's owner thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.errors import CorralError
from services.runner.sampling import SamplingParams


@dataclass(frozen=True)
class GenStats:
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    prompt_cached_count: int


@dataclass(frozen=True)
class GenEvent:
    """A streamed piece; the last one has done=True, a done_reason and stats."""

    text: str
    token_ids: list[int]
    done: bool = False
    done_reason: int = 0  # common_pb2.DoneReason
    stats: GenStats | None = None


Emit = Callable[[GenEvent | CorralError], None]


@dataclass
class Job:
    """One generation request. Only `cancelled` is written by another thread."""

    prompt: str
    prompt_tokens: list[int]
    add_bos: bool
    params: SamplingParams
    grammar: str
    emit: Emit
    request_id: str = ""
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)  # resolved on the owner thread
