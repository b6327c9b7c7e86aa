"""What flows between the asyncio side and an instance's owner thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.errors import CorralError
from services.runner.constraints import Constraint, Thinking
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


@dataclass(frozen=True)
class GenerateSpec:
    """One generation request as asked (GenerateRequest without instance_id); the defaults live here."""

    prompt: str = ""  # tokenized with parse_special; ignored when prompt_tokens is set
    prompt_tokens: tuple[int, ...] = ()
    add_bos: bool = False
    params: SamplingParams = field(default_factory=SamplingParams)
    grammar: str = ""  # GBNF; empty = none
    json_schema: str = ""  # converted to GBNF on the owner thread; wins over grammar
    constraint: Constraint | None = None  # wins over both (constraints.resolve)
    thinking: Thinking | None = None  # the thinking block that may open the output
    logprobs: bool = False
    top_logprobs: int = 0  # clamped to 0-20; > 0 implies logprobs
    truncate: bool = False  # cut a too-long prompt (keeping num_keep) instead of refusing it
    shift: bool = True  # when the context fills: shift it (True) or stop with LENGTH
    num_ctx: int = 0  # this sequence's context; 0 or more than the instance's = the instance's
    request_id: str = ""


@dataclass
class Job:
    """A GenerateSpec on its way through the owner thread. Only `cancelled` is written by another thread."""

    spec: GenerateSpec
    emit: Emit
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)  # resolved on the owner thread
    grammar: str = ""  # GBNF resolved on the owner thread (constraints.resolve)
    # Read for every sampled token, so resolved once here.
    logprobs: bool = field(init=False)
    top_logprobs: int = field(init=False)

    def __post_init__(self) -> None:
        self.logprobs = self.spec.logprobs or self.spec.top_logprobs > 0
        self.top_logprobs = max(0, min(self.spec.top_logprobs, 20))
