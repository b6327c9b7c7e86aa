"""What flows between the asyncio side and an instance's owner thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.errors import CorralError
from services.runner.logprobs import PositionLogprobs
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
    logprobs: list[PositionLogprobs] = field(default_factory=list)  # one per token id, when asked


Emit = Callable[[GenEvent | CorralError], None]


@dataclass
class Job:
    """One generation request. Only `cancelled` is written by another thread."""

    prompt: str
    prompt_tokens: list[int]
    add_bos: bool
    params: SamplingParams
    grammar: str  # GBNF; empty = none
    emit: Emit
    request_id: str = ""
    json_schema: str = ""  # converted to GBNF on the owner thread; wins over grammar
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = False  # cut a too-long prompt (keeping num_keep) instead of refusing it
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)  # resolved on the owner thread
