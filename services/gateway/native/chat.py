"""POST /api/chat."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.gateway import inference, options, pipeline, toolchoice
from services.gateway.errors import bad_request
from services.gateway.http import collect, json_response, ndjson_stream, now_rfc3339, parse_body
from services.gateway.native.common import keep_alive, metrics

router = APIRouter()
ROLES = ("system", "user", "assistant", "tool")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    stream: bool = True
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: Any = None
    tool_choice: Any = None  # beyond Ollama: OpenAI's spelling, enforced by grammar
    grammar: str | None = None  # beyond Ollama: raw GBNF (llama-server's `grammar`)
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(False, alias="_debug_render_only")


def normalize_messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's Message shape: lower-cased role, string content, tool-call arguments as objects."""
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"invalid message at index {i}", "invalid_message")
        role = str(m.get("role") or "").lower()
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise bad_request(
                f"json: cannot unmarshal {type(content).__name__} into message content", "invalid_message"
            )
        msg: dict[str, Any] = {"role": role, "content": content or ""}
        for key in ("thinking", "tool_name", "tool_call_id"):
            if m.get(key):
                if not isinstance(m[key], str):
                    raise bad_request(f"json: cannot unmarshal {type(m[key]).__name__} into message {key}")
                msg[key] = m[key]
        if m.get("images"):
            if not isinstance(m["images"], list) or not all(isinstance(x, str) for x in m["images"]):
                raise bad_request("json: cannot unmarshal message images: not an array of strings")
            msg["images"] = m["images"]
        if m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise bad_request("json: cannot unmarshal tool_calls: not an array", "invalid_message")
            msg["tool_calls"] = [_history_call(tc, n) for n, tc in enumerate(m["tool_calls"])]
        out.append(msg)
    return out


def _history_call(tc: Any, n: int) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict):
        raise bad_request("a tool call must be an object with a function object", "invalid_tool_call")
    args = fn.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request("tool call arguments must be an object", "invalid_tool_call")
    call: dict[str, Any] = {"function": {"index": fn.get("index", n), "name": fn.get("name", ""), "arguments": args}}
    if tc.get("id"):
        call["id"] = tc["id"]
    return call


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(c["message"]["content"] for c in chunks)}
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    if thinking:
        msg["thinking"] = thinking
    calls = [tc for c in chunks for tc in c["message"].get("tool_calls", [])]
    if calls:
        msg["tool_calls"] = calls
    final["message"] = msg
    lps = [lp for c in chunks for lp in c.get("logprobs", [])]
    if lps:
        final["logprobs"] = lps
    return final


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    req = await parse_body(request, ChatRequest)
    started = time.monotonic_ns()
    if not req.model:
        raise bad_request("model is required", "model_required")
    think = pipeline.parse_think(req.think)
    backends = request.app.state.backends
    model = await inference.resolve(backends, req.model)
    ka = keep_alive(req.keep_alive)
    merged = options.merge(options.model_params(model), req.options)
    load = options.to_load(merged)

    if not req.messages:  # load or unload only
        reason = "load"
        if ka == 0:
            await inference.unload(backends, model)
            reason = "unload"
        else:
            lease = await inference.acquire(backends, model, load, ka, "")
            await inference.release(backends, lease)
        return json_response(
            {
                "model": req.model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        )

    messages = normalize_messages(req.messages)
    job = await pipeline.prepare_chat(
        backends,
        req.model,
        messages,
        tools=req.tools,
        fmt=req.format,
        request_options=req.options,
        think=think,
        keep_alive=ka,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        tool_choice=toolchoice.from_openai(req.tool_choice),
        grammar=req.grammar or "",
        model=model,  # resolved above for load/unload; not again
    )
    job.truncate, job.shift = req.truncate, req.shift
    if req.debug_render_only:
        return json_response(
            {
                "model": req.model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "_debug_info": pipeline.debug_info(job.prompt, messages),
            }
        )
    runner_stream = pipeline.run(backends, job)

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for ev in runner_stream:
                msg: dict[str, Any] = {"role": "assistant", "content": ev.content}
                if ev.thinking:
                    msg["thinking"] = ev.thinking
                if ev.tool_calls:
                    msg["tool_calls"] = ev.tool_calls
                out: dict[str, Any] = {"model": req.model, "created_at": now_rfc3339(), "message": msg, "done": ev.done}
                if ev.logprobs:
                    out["logprobs"] = ev.logprobs
                if ev.final is not None:
                    out.update(metrics(ev.final, started, ev.load_ns))
                yield out
        finally:
            await runner_stream.aclose()

    if req.stream:
        return await ndjson_stream(chunks())
    return await collect(request, chunks(), _merge)
