"""What the gateway does with the leased instance's tokenizer before a generation: Ollama's
chat history truncation (server/prompt.go `chatPrompt`) and /api/generate's deprecated
`context` prefix. The search itself is pure and takes any token counter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.logs import fields
from corral.v1 import registry_pb2
from services.gateway import prompts
from services.gateway.inference import Instance
from services.gateway.prompts import Prompt

log = logging.getLogger(__name__)

# A tokenizer yields at most one token per byte of text plus the few it adds itself (BOS,
# EOS, SentencePiece's dummy-prefix space): a prompt shorter than that fits without asking.
ADDED_TOKENS = 4

Messages = list[dict[str, Any]]
Counter = Callable[[int], Awaitable[int]]


@dataclass(frozen=True)
class History:
    """A chat's messages (the model's SYSTEM included) and how to render any cut of them."""

    messages: Messages
    render: Callable[[Messages], Prompt]


def droppable(messages: Messages) -> int:
    """How many messages truncation may drop: those before the last that are not system messages."""
    return sum(1 for m in messages[:-1] if m.get("role") != "system")


def drop_oldest(messages: Messages, k: int) -> Messages:
    """The messages without the `k` oldest non-system ones. The same as Ollama's cut at an
    index: the system messages before it, then every message from it on."""
    out: Messages = []
    last = len(messages) - 1
    for i, m in enumerate(messages):
        if k > 0 and i < last and m.get("role") != "system":
            k -= 1
        else:
            out.append(m)
    return out


async def fewest_dropped(n: int, count: Counter, limit: int) -> int:
    """The fewest of `n` droppable messages to drop so that the prompt's token count
    (`count(k)` with `k` dropped) is below `limit`; `n` when nothing fits (the runner then
    cuts tokens). The full prompt is counted first; since the count shrinks with every
    message dropped, the rest is a binary search: at most 1 + ceil(log2(n)) counts."""
    if n == 0 or await count(0) < limit:
        return 0
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if await count(mid) < limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def surely_fits(text: str, limit: int) -> bool:
    """True when `text` has fewer tokens than `limit` whatever the tokenizer (see ADDED_TOKENS)."""
    return len(text.encode()) + ADDED_TOKENS < limit


async def fit_history(instance: Instance, history: History, full: Prompt) -> Prompt:
    """The chat's prompt (`full` renders every message) without the oldest messages that
    keep it from fitting the instance's context. Each cut is rendered once, off the loop."""
    n, limit = droppable(history.messages), instance.context_length
    if n == 0 or limit <= 0 or surely_fits(full.text, limit):
        return full
    rendered = {0: full}

    async def prompt(k: int) -> Prompt:
        if k not in rendered:
            rendered[k] = await asyncio.to_thread(history.render, drop_oldest(history.messages, k))
        return rendered[k]

    async def count(k: int) -> int:
        p = await prompt(k)
        return len(await instance.tokenize(p.text, p.add_bos))

    k = await fewest_dropped(n, count, limit)
    if k:
        log.info("dropped the oldest chat messages to fit the context", extra=fields(dropped=k, num_ctx=limit))
    return await prompt(k)


async def with_context(instance: Instance, model: registry_pb2.Model, context: Sequence[int], prompt: Prompt) -> Prompt:
    """Generate's deprecated `context`: the earlier exchange's text written before the prompt."""
    return prompts.with_prefix(model, await instance.detokenize(context), prompt)
