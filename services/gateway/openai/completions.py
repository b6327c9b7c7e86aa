"""POST /v1/completions: a string, a list of strings, token ids or lists of token ids."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import inference, options, pipeline, prompts
from services.gateway.errors import bad_request, openai_body
from services.gateway.http import collect, parse_body
from services.gateway.native.common import keep_alive
from services.gateway.openai import common
from services.gateway.sse import Event, sse_stream

router = APIRouter()


class CompletionRequest(common.TextRequest):
    prompt: Any = None  # a string, strings, token ids or lists of them (checked by _prompts)
    suffix: str | None = None
    logprobs: int | None = None  # OpenAI's legacy API: how many top tokens, 0-5 (Ollama allows 20)


def _prompts(value: Any) -> list[str | list[int]]:
    def is_tokens(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        return [value]
    if is_tokens(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or is_tokens(v) for v in value):
        return list(value)
    raise bad_request("invalid prompt: expected a string, a list of strings, token ids or lists of token ids")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    req = await parse_body(request, CompletionRequest)
    if not req.model:
        raise bad_request("model is required", "model_required")
    n = common.choice_count(req.n)
    items = _prompts(req.prompt)
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    suffix = req.suffix or ""
    pipeline.check_capabilities(model, req.model, "generate", None, suffix)
    merged = options.merge(options.model_params(model), common.sampling_options(req))
    n_logprobs = req.logprobs
    ka = keep_alive(req.keep_alive)

    async def job(prompt: str | list[int]) -> pipeline.Job:
        if isinstance(prompt, str):  # templates are untrusted: rendered off the event loop
            rendered = await asyncio.to_thread(prompts.render_generate, model, prompt, None, False, None, suffix)
            tokens: list[int] = []
        else:
            rendered, tokens = prompts.Prompt("", False, "raw"), prompt
        return pipeline.Job(
            model=model,
            prompt=rendered,
            sampling=options.to_sampling(merged),
            load=options.to_load(merged),
            keep_alive=ka,
            prompt_tokens=tokens,
            logprobs=bool(n_logprobs),
            top_logprobs=n_logprobs or 0,
        )

    jobs = [await job(p) for p in items]
    cid, created = common.new_id("cmpl"), int(time.time())
    base = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": req.model,
        "system_fingerprint": "fp_ollama",
    }

    async def events() -> AsyncGenerator[tuple[int, pipeline.Event], None]:
        """Choices in OpenAI's order: prompt by prompt, `n` for each (index = prompt * n + choice)."""
        for i, j in enumerate(jobs):
            async with contextlib.aclosing(pipeline.run_choices(backends, j, n)) as stream:
                async for k, ev in stream:
                    yield i * n + k, ev

    def usage(finals: dict[int, pipeline.Event]) -> dict[str, int]:
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for i in range(len(jobs)):
            per_prompt = common.total_usage([ev for k, ev in finals.items() if k // n == i])
            for key, v in per_prompt.items():
                totals[key] += v
        return totals

    def logprobs_obj(lps: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not lps:
            return None
        return {
            "tokens": [lp["token"] for lp in lps],
            "token_logprobs": [lp["logprob"] for lp in lps],
            "top_logprobs": [{t["token"]: t["logprob"] for t in lp["top_logprobs"]} for lp in lps],
        }

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def sse() -> AsyncGenerator[Event, None]:
            finals: dict[int, pipeline.Event] = {}
            async for i, ev in events():
                finish = common.finish_reason(ev, False) if ev.done else None
                choice = {
                    "index": i,
                    "text": ev.content,
                    "logprobs": logprobs_obj(ev.logprobs),
                    "finish_reason": finish,
                }
                yield None, {**base, "choices": [choice]}
                if ev.done:
                    finals[i] = ev
            if include_usage:
                yield None, {**base, "choices": [], "usage": usage(finals)}
            yield None, "[DONE]"

        return await sse_stream(sse(), openai_body)

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async for i, ev in events():
            yield {"i": i, "ev": ev}

    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        choices = []
        finals: dict[int, pipeline.Event] = {}
        for i in range(len(jobs) * n):
            evs: list[pipeline.Event] = [p["ev"] for p in parts if p["i"] == i]
            if not evs:
                continue
            last = evs[-1]
            lps = [lp for e in evs for lp in e.logprobs]
            choices.append(
                {
                    "index": i,
                    "text": "".join(e.content for e in evs),
                    "logprobs": logprobs_obj(lps),
                    "finish_reason": common.finish_reason(last, False),
                }
            )
            finals[i] = last
        return {**base, "choices": choices, "usage": usage(finals)}

    return await collect(request, chunks(), merge, error_body=openai_body)
