"""Pieces shared by the OpenAI endpoints: request fields and options, ids, usage, errors."""

from __future__ import annotations

import secrets
from typing import Any

from services.gateway.errors import bad_request
from services.gateway.http import JsonModel
from services.gateway.native.common import DONE_REASONS
from services.gateway.pipeline import MAX_CHOICES, Event


class StreamOptions(JsonModel):
    include_usage: bool = False


class TextRequest(JsonModel):
    """The fields /v1/chat/completions and /v1/completions share."""

    model: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None  # values checked by options (OpenAI's message)
    stop: Any = None  # a string or a list of them, checked by sampling_options (Ollama's message)
    n: Any = None  # checked by choice_count (OpenAI's message)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    keep_alive: float | str | None = None  # Ollama's, accepted on /v1 as Ollama does


EFFORT_TO_THINK: dict[str, Any] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def think_from_effort(effort: Any) -> Any:
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORT_TO_THINK:
        raise bad_request(f"invalid reasoning value: '{effort}' (must be one of: {', '.join(EFFORT_TO_THINK)})")
    return EFFORT_TO_THINK[effort]


def sampling_options(req: TextRequest) -> dict[str, Any]:
    """OpenAI fields to Ollama options; temperature and top_p default to 1.0 like Ollama."""
    opts: dict[str, Any] = {}
    opts["temperature"] = 1.0 if req.temperature is None else req.temperature
    opts["top_p"] = req.top_p if req.top_p else 1.0
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty", "logit_bias"):
        if getattr(req, key) is not None:
            opts[key] = getattr(req, key)
    stop = req.stop
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request(f"invalid type for 'stop' field: {type(stop).__name__}")
        opts["stop"] = stop
    return opts


def choice_count(n: Any) -> int:
    """OpenAI's `n`, checked before any work so that a stream never starts with a bad one."""
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int):
        raise bad_request("n must be an integer", "invalid_n")
    if not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"n must be between 1 and {MAX_CHOICES}", "invalid_n")
    return n


def finish_reason(ev: Event, had_tools: bool) -> str:
    if ev.final is None:
        return "stop"
    reason = DONE_REASONS.get(ev.final.done_reason, "stop")
    return "tool_calls" if had_tools and reason == "stop" else reason


def total_usage(finals: list[Event]) -> dict[str, int]:
    """Usage of the choices of one prompt: the prompt counted once, every completion."""
    stats = [ev.final.stats for ev in finals if ev.final is not None]
    prompt = max((s.prompt_eval_count for s in stats), default=0)
    completion = sum(s.eval_count for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_logprobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp["token"],
            "logprob": lp["logprob"],
            "bytes": lp["bytes"],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]} for t in lp["top_logprobs"]
            ],
        }
        for lp in items
    ]
