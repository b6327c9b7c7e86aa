"""POST /v1/chat/completions."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from services.gateway import pipeline, toolchoice
from services.gateway.errors import bad_request, openai_body
from services.gateway.http import JsonModel, collect, json_response, parse_body
from services.gateway.native.common import keep_alive
from services.gateway.openai import common
from services.gateway.sse import Event, sse_stream

router = APIRouter()


class FunctionCall(JsonModel):
    name: str = ""
    arguments: str | dict[str, Any] | None = None  # a JSON object string; an object is accepted too


class ToolCall(JsonModel):
    id: str = ""
    function: FunctionCall = Field(default_factory=FunctionCall)


class ChatMessage(JsonModel):
    role: str = ""
    content: str | list[Any] | None = None  # text, or parts (checked by _text)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class Reasoning(JsonModel):
    effort: str | None = None


class ChatCompletionRequest(common.TextRequest):
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    grammar: str | None = None  # beyond OpenAI: raw GBNF (llama-server's `grammar`)
    debug_render_only: bool = Field(False, alias="_debug_render_only")


def _text(content: Any) -> tuple[str, list[str]]:
    """Message content as text plus base64 images (data URIs only, like Ollama)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise bad_request("invalid message content")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url", "") if isinstance(url, dict) else str(url or "")
            if url.startswith(("http://", "https://")):
                raise bad_request("image URLs are not currently supported, please use base64 encoded data instead")
            if not url.startswith("data:") or "," not in url:
                raise bad_request("invalid image input")
            images.append(url.split(",", 1)[1])
        else:
            raise bad_request(f"invalid message part type: {kind}")
    return "\n".join(texts), images


def _arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise bad_request("tool call arguments must be a JSON object string") from exc
    if not isinstance(parsed, dict):
        raise bad_request("tool call arguments must be a JSON object string")
    return parsed


def to_ollama_messages(messages: list[ChatMessage] | None) -> list[dict[str, Any]]:
    if not messages:
        raise bad_request("[] is too short - 'messages'")
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.role.lower()
        role = "system" if role == "developer" else role
        text, images = _text(m.content)
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["images"] = images
        if m.reasoning or m.reasoning_content:
            msg["thinking"] = m.reasoning or m.reasoning_content
        if m.tool_calls:
            calls = []
            for i, tc in enumerate(m.tool_calls):
                names_by_id[tc.id] = tc.function.name
                calls.append(
                    {
                        "id": tc.id,
                        "function": {
                            "index": i,
                            "name": tc.function.name,
                            "arguments": _arguments(tc.function.arguments),
                        },
                    }
                )
            msg["tool_calls"] = calls
        if role == "tool":
            call_id = m.tool_call_id or ""
            msg["tool_call_id"] = call_id
            msg["tool_name"] = m.name or names_by_id.get(call_id, "")
        out.append(msg)
    return out


def response_format(rf: dict[str, Any] | None) -> Any:
    if not rf:
        return None
    kind = rf.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be an object")
        return schema
    if kind == "text":
        return None
    raise bad_request(f"invalid response_format type: {kind}")


def openai_tool_calls(calls: list[dict[str, Any]], stream: bool) -> list[dict[str, Any]]:
    out = []
    for tc in calls:
        fn = tc["function"]
        item: dict[str, Any] = {
            "id": tc["id"],
            "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"], ensure_ascii=False)},
        }
        item["index"] = fn["index"]
        out.append(item)
    return out


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    if not req.model:
        raise bad_request("model is required", "model_required")
    n = common.choice_count(req.n)
    effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
    think = pipeline.parse_think(common.think_from_effort(effort))
    top = req.top_logprobs or 0
    backends = request.app.state.backends
    messages = to_ollama_messages(req.messages)
    job = await pipeline.prepare_chat(
        backends,
        req.model,
        messages,
        tools=req.tools or None,
        fmt=response_format(req.response_format),
        request_options=common.sampling_options(req),
        think=think,
        keep_alive=keep_alive(req.keep_alive),
        logprobs=bool(req.logprobs) or top > 0,
        top_logprobs=top,
        coerce_level=True,
        tool_choice=toolchoice.from_openai(req.tool_choice),
        grammar=req.grammar or "",
    )
    cid, created, model = common.new_id("chatcmpl"), int(time.time()), req.model
    base = {"id": cid, "created": created, "model": model, "system_fingerprint": "fp_ollama"}
    if req.debug_render_only:
        info = pipeline.debug_info(job.prompt, messages)
        empty = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop", "logprobs": None}
        return json_response({**base, "object": "chat.completion", "choices": [empty], "_debug_info": info})
    events = pipeline.run_choices(backends, job, n)

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await sse_stream(_stream(events, base, include_usage), openai_body)

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(events):
            async for i, ev in events:
                yield {"i": i, "ev": ev}

    def choice(i: int, evs: list[pipeline.Event]) -> dict[str, Any]:
        calls = [tc for e in evs for tc in e.tool_calls]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(e.content for e in evs)}
        reasoning = "".join(e.thinking for e in evs)
        if reasoning:
            msg["reasoning"] = reasoning
        if calls:
            msg["tool_calls"] = openai_tool_calls(calls, False)
        lps = [lp for e in evs for lp in e.logprobs]
        return {
            "index": i,
            "message": msg,
            "finish_reason": common.finish_reason(evs[-1], bool(calls)),
            "logprobs": {"content": common.openai_logprobs(lps)} if lps else None,
        }

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        by_choice: dict[int, list[pipeline.Event]] = {}
        for item in items:
            by_choice.setdefault(item["i"], []).append(item["ev"])
        choices = [choice(i, evs) for i, evs in sorted(by_choice.items())]
        usage = common.total_usage([evs[-1] for evs in by_choice.values()])
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    return await collect(request, chunks(), merge, error_body=openai_body)


async def _stream(
    events: AsyncGenerator[tuple[int, pipeline.Event], None], base: dict[str, Any], include_usage: bool
) -> AsyncGenerator[Event, None]:
    started: set[int] = set()
    had_tools: set[int] = set()
    last: dict[int, pipeline.Event] = {}

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> Event:
        if i not in started:
            delta = {"role": "assistant", **delta}
            started.add(i)
        choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": common.openai_logprobs(logprobs)}
        return None, {**base, "object": "chat.completion.chunk", "choices": [choice]}

    def finish(i: int) -> Event:
        if i not in started:
            return chunk(i, {"content": ""}, common.finish_reason(last[i], i in had_tools))
        return chunk(i, {}, common.finish_reason(last[i], i in had_tools))

    async with contextlib.aclosing(events):
        async for i, ev in events:
            last[i] = ev
            pieces: list[dict[str, Any]] = []
            if ev.thinking:
                pieces.append({"content": "", "reasoning": ev.thinking})
            if ev.content or ev.logprobs:
                pieces.append({"content": ev.content})
            if ev.tool_calls:
                had_tools.add(i)
                pieces.append({"tool_calls": openai_tool_calls(ev.tool_calls, True)})
            for k, delta in enumerate(pieces):
                yield chunk(i, delta, logprobs=ev.logprobs if k == len(pieces) - 1 else None)
            if ev.done:
                yield finish(i)
        if not last:
            return
        for i, ev in sorted(last.items()):
            if not ev.done:
                yield finish(i)
        if include_usage:
            usage = common.total_usage(list(last.values()))
            yield None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        yield None, "[DONE]"
